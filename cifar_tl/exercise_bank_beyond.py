"""The exercises of notebooks 07-09 (your images, cached features, fine-tuning): checks, solutions, wrong answers."""

from __future__ import annotations

import copy
import math
import textwrap
from pathlib import Path

import torch

from .exercise_bank_training import head_run, judge_best, judge_table
from .exercises import Wrong, register

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# ---- 07 your own images ----------------------------------------------------------------------
_MAKE_PHOTO = textwrap.dedent("""
    from PIL import Image
    from cifar_tl import widgets
    if image_path is None:  # no photo of yours yet: this makes one, a test image mirrored and stretched
        image_path = tmp / "my_photo.jpg"
        Image.fromarray(widgets.raw_image(test_ds, 1)).transpose(Image.FLIP_LEFT_RIGHT).resize((400, 300)).save(image_path)
""")


@register("07.1", "my_top5", _MAKE_PHOTO + textwrap.dedent("""
    my_top5 = widgets.top_k(model, image_path, cfg.image_size, device)
    probs, idx = my_top5
    for p, i in zip(probs.tolist(), idx.tolist()):
        print(f"{train_ds.classes[i]:>16s} {p:6.1%}")
    print(f"the 5 best of {len(train_ds.classes)} classes hold {probs.sum():.0%} of the probability: "
          "the model answers with one of the classes it knows, whatever the photo shows")
    """), [(_MAKE_PHOTO + "my_top5 = widgets.top_k(model, example, cfg.image_size, device)", "bundled example"),
          ("from cifar_tl import widgets\nimage_path = None\nmy_top5 = widgets.top_k(model, example, cfg.image_size, device)",
           "image_path is still None"),
          (_MAKE_PHOTO + "p, i = widgets.top_k(model, image_path, cfg.image_size, device, k=3)\nmy_top5 = (p, i)", "top 5")])
def _top5(ns, my_top5):
    from . import widgets

    path, example = ns.get("image_path"), ns.get("example")
    if not path:
        raise Wrong("image_path is still None: set it to your photo in the parameters cell, run the notebook again, "
                    "then call top_k on image_path")
    path = Path(path)
    if example is not None and path.resolve() == Path(example).resolve():
        raise Wrong("image_path is the bundled example; point it to a photo of yours")
    if not path.is_file():
        raise Wrong(f"no file at {path}")
    if not isinstance(my_top5, (tuple, list)) or len(my_top5) != 2:
        raise Wrong("top_k returns (probabilities, class indices): keep both")
    probs, idx = (torch.as_tensor(t) for t in my_top5)
    if len(idx) != 5:
        raise Wrong(f"{len(idx)} classes: the top 5 (k=5, top_k's default)")
    model, cfg, device = ns["model"], ns["cfg"], ns.get("device", "cpu")
    truth_p, truth_i = widgets.top_k(model, path, cfg.image_size, device)
    if torch.equal(idx, truth_i) and torch.allclose(probs, truth_p, atol=1e-5):
        names = ns["train_ds"].classes
        return f"top-1 for {path.name}: {names[int(idx[0])]} ({float(probs[0]):.0%})"
    if example is not None:
        ex_p, ex_i = widgets.top_k(model, example, cfg.image_size, device)
        if torch.equal(idx, ex_i) and torch.allclose(probs, ex_p, atol=1e-5):
            raise Wrong("these are the bundled example's top 5, not image_path's: pass image_path to top_k")
    raise Wrong("not the top 5 that the model gives for image_path: widgets.top_k(model, image_path, cfg.image_size, device)")


_COPY_FOLDER = textwrap.dedent("""
    import shutil
    from pathlib import Path
    from PIL import Image
    from cifar_tl import data
    folder = Path(shutil.copytree(folder, tmp / "{name}", dirs_exist_ok=True))  # a copy: your folder is unchanged
    folder_cfg = folder_cfg.replace(source=f"folder:{{folder}}")
    new_class = folder / "my_class"
    new_class.mkdir(exist_ok=True)
    for j, img in enumerate(images[labels == 55][:{n}]):
        Image.fromarray(img).save(new_class / f"new{{j}}.png")
""")


@register("07.2", "my_train", _COPY_FOLDER.format(name="solution_photos", n=6) + textwrap.dedent("""
    my_train = data.build_datasets(folder_cfg).train
    print(f"{len(my_train.classes)} classes now: {my_train.classes}")
    print(f"the new class has {len(list(new_class.iterdir()))} images, {sum(t == my_train.classes.index('my_class') for t in my_train.targets)} "
          "of them in the training split (the others hold out validation and test photos)")
    """), [("from cifar_tl import data\nmy_train = data.build_datasets(folder_cfg).train", "still holds"),
          (_COPY_FOLDER.format(name="w_splits", n=6) + "my_train = data.build_datasets(folder_cfg)", "all three splits"),
          (_COPY_FOLDER.format(name="w_small", n=3) + "my_train = data.build_datasets(folder_cfg).train", "at least 5")])
def _new_class(ns, my_train):
    folder, before = Path(ns["folder"]), ns["folder_classes"]
    if isinstance(my_train, tuple):
        raise Wrong("that is all three splits (train, val, test); keep the training split, .train")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    counts = {d.name: sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir()) for d in subdirs}
    if len(subdirs) <= before:
        raise Wrong(f"the folder still holds {len(subdirs)} class folders: make a new subfolder of `folder` "
                    "with 5 or more images, then rebuild")
    small = {name: n for name, n in counts.items() if n < 5}
    if small:
        name, n = next(iter(small.items()))
        raise Wrong(f"{name}/ holds {n} images: a class needs at least 5 (some go to validation and test)")
    classes = list(getattr(my_train, "classes", []))
    if sorted(classes) != sorted(counts):
        raise Wrong(f"my_train has {len(classes)} classes, the folder {len(counts)}: rebuild with "
                    "data.build_datasets(folder_cfg) after adding the folder")
    if len(classes) != before + 1:
        raise Wrong(f"{len(classes)} classes: add exactly one class to the {before} the folder had")
    return f"{len(classes)} classes now: {classes}"


# ---- 08 cached features ----------------------------------------------------------------------
@register("08.1", "tutorial_passes cached_passes", """
    def tutorial_passes(N, E):
        return (N // 8) * 8 * E  # every epoch, whole batches of 8 (drop_last)

    def cached_passes(N, E):
        return N if E == 1 else 2 * N  # 1 epoch samples one view per image; from 3 epochs on, both views, once

    from cifar_tl import features
    for E in (1, 2, 3, 10):
        cached = int(features.plan_views(50_000, 0, E).sum())
        print(f"50,000 images, {E:2d} epoch(s): tutorial {tutorial_passes(50_000, E):>7,}, cached {cached:>7,} backbone passes")
    print("2 epochs sample about 1.5 views per image; from 3 epochs on, the cache costs the same however long you train")
    """, [("def tutorial_passes(N, E):\n    return N * E\n\ndef cached_passes(N, E):\n    return N if E == 1 else 2 * N",
           "whole batches"),
          ("def tutorial_passes(N, E):\n    return (N // 8) * 8 * E\n\ndef cached_passes(N, E):\n    return 2 * N",
           "one view per image"),
          ("def tutorial_passes(N, E):\n    return (N // 8) * 8 * E\n\ndef cached_passes(N, E):\n    return N * E",
           "once each")])
def _passes(ns, tutorial_passes, cached_passes):
    from .features import plan_views

    for n, e in ((20, 1), (1003, 3), (50_000, 10)):
        got, truth = tutorial_passes(n, e), (n // 8) * 8 * e
        if got != truth:
            hint = ("only whole batches of 8 go through (drop_last)" if got == n * e
                    else "the tutorial pushes every image through the backbone every epoch")
            raise Wrong(f"tutorial_passes({n}, {e}) = {got}, counting says {truth}: {hint}")
    for n, e in ((1000, 1), (1000, 3), (1000, 10)):
        got, truth = cached_passes(n, e), int(plan_views(n, ns.get("cfg").seed if "cfg" in ns else 0, e).sum())
        if got != truth:
            hint = ("one epoch samples one view per image, and only the sampled views are extracted" if e == 1
                    else "from 3 epochs on, every view is extracted once each, however many epochs follow")
            raise Wrong(f"cached_passes({n}, {e}) = {got}, the cache extracts {truth}: {hint}")
    measured = ns.get("backbone_images", {})
    if "tutorial" in measured and "timing_images" in ns:
        if tutorial_passes(ns["timing_images"], ns["timing_epochs"]) != measured["tutorial"]:
            raise Wrong(f"tutorial_passes disagrees with the {measured['tutorial']} images counted above")
    return (f"the tutorial's own run (50,000 images): 1 epoch {tutorial_passes(50_000, 1):,} vs {cached_passes(50_000, 1):,}; "
            f"10 epochs {tutorial_passes(50_000, 10):,} vs {cached_passes(50_000, 10):,}")


def _default(ns) -> tuple:
    cfg = ns["cfg"]
    return (cfg.hidden[0], len(cfg.hidden), cfg.lr, ns.get("epochs") or cfg.epochs)


@register("08.2", "tried my_design", """
    default = (cfg.hidden[0], len(cfg.hidden), cfg.lr, epochs)
    candidates = [default, (1024, 1, 1e-3, epochs), (512, 1, 1e-3, epochs), (256, 2, 3e-3, epochs)]
    tried = {design: accuracy_of(design) for design in candidates}  # validation accuracy
    my_design = max(tried, key=tried.get)
    for design, score in tried.items():
        print(f"hidden {design[0]:4d}, depth {design[1]}, lr {design[2]:g}: validation {score:.1%}")
    se = (tried[my_design] * (1 - tried[my_design]) / len(val_y)) ** 0.5
    print(f"chosen on validation: {my_design}; one standard error on {len(val_y)} images is {se:.1%}, "
          f"so a gain of {tried[my_design] - tried[default]:.1%} over the default {'is' if tried[my_design] - tried[default] > se else 'is not'} beyond noise")
    print("the test split stays untouched here: it measures the chosen head once, at the end")
    """, [("tried = {(256, 2, 1e-3, epochs): 0.4321, (1024, 1, 1e-3, epochs): 0.6789, (512, 1, 1e-3, epochs): 0.5557}\n"
           "my_design = (1024, 1, 1e-3, epochs)", "not trained here"),
          ("from cifar_tl.exercise_bank_training import head_run\n"
           "tried = {d: head_run(globals(), *d)[1] for d in [(cfg.hidden[0], len(cfg.hidden), cfg.lr, epochs), "
           "(1024, 1, 1e-3, epochs), (512, 1, 1e-3, epochs)]}\nmy_design = max(tried, key=tried.get)", "test accuracies",
           "test_f test_y"),
          ("tried = {(1024, 1, 1e-3, epochs): accuracy_of((1024, 1, 1e-3, epochs)), (512, 1, 1e-3, epochs): "
           "accuracy_of((512, 1, 1e-3, epochs)), (64, 1, 1e-3, epochs): accuracy_of((64, 1, 1e-3, epochs))}\n"
           "my_design = max(tried, key=tried.get)", "default")])
def _design(ns, tried, my_design):
    if not isinstance(tried, dict) or len(tried) < 3:
        raise Wrong("try at least 3 designs: tried = {(hidden, depth, lr, epochs): validation accuracy, ...}")
    default = _default(ns)
    if not any(tuple(d) == default or (tuple(d)[:2] == default[:2] and math.isclose(d[2], default[2]) and d[3] == default[3])
               for d in tried):
        raise Wrong(f"include the default, {default}, to compare against")
    truths = judge_table(tried, lambda d: head_run(ns, *d), "design")
    judge_best(tried, tuple(my_design), "design")
    gain = truths[tuple(my_design)] - next(v for d, v in truths.items() if tuple(d)[:2] == default[:2] and d[3] == default[3])
    se = (truths[tuple(my_design)] * (1 - truths[tuple(my_design)]) / len(ns["val_y"])) ** 0.5
    return (f"{tuple(my_design)} is the best of your {len(tried)} on validation ({gain:+.1%} over the default; "
            f"one standard error is {se:.1%})")


# ---- 09 fine-tuning --------------------------------------------------------------------------
def _group_lrs(base, k: int, lr: float, decay: float) -> dict[str, float]:
    from .finetune import param_groups, unfreeze

    m = copy.deepcopy(base)
    unfreeze(m.backbone, k)
    return {g["name"]: g["lr"] for g in param_groups(m, lr, decay) if "no decay" not in g["name"]}


@register("09.1", "second_stage_lr", """
    import copy
    from cifar_tl import finetune
    second_stage_lr = 1e-3 * 0.1 ** 2  # the head at lr, the top stage at lr * decay, the next at lr * decay ** 2
    m = copy.deepcopy(base)
    finetune.unfreeze(m.backbone, 2)
    for group in finetune.param_groups(m, 1e-3, 0.1):
        if "no decay" not in group["name"]:
            print(f"{group['name']:28s} {group['lr']:.0e}")
    print(f"second stage from the top: {second_stage_lr:.0e}, {1e-3 / second_stage_lr:.0f}x slower than the head: "
          "the lower a stage, the more general its features, the less it should move")
    """, [("second_stage_lr = 1e-3 * 0.1", "top stage"),
          ("second_stage_lr = 1e-3", "head's"),
          ("second_stage_lr = 1e-3 * 0.1 ** 3", "one decay")])
def _second_stage(ns, second_stage_lr):
    a = float(second_stage_lr)
    base = ns["base"]
    lrs = list(_group_lrs(base, 2, 1e-3, 0.1).values())  # head, top stage, second stage, outside
    truth = lrs[2]
    if math.isclose(a, truth, rel_tol=1e-9):
        return f"{a:.0e}: {1e-3 / a:.0f} times slower than the head"
    if math.isclose(a, lrs[1], rel_tol=1e-9):
        raise Wrong("that is the top stage's rate; the second from the top is one lr_decay further down")
    if math.isclose(a, 1e-3, rel_tol=1e-9):
        raise Wrong("that is the head's rate; each stage down multiplies by lr_decay once more")
    raise Wrong("count from the head: the head lr, the top stage lr * lr_decay, the one below it one decay more "
                "(not one decay too many or too few)")


@register("09.2", "my_model top1_params", """
    import copy
    from cifar_tl import finetune
    my_model = copy.deepcopy(base)  # a copy: base stays frozen for the other experiments
    finetune.unfreeze(my_model.backbone, 1)
    top1_params = sum(p.numel() for p in my_model.backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in my_model.backbone.parameters())
    for name, stage in zip(my_model.backbone.stage_names, my_model.backbone.stages):
        n = sum(p.numel() for p in stage.parameters() if p.requires_grad)
        print(f"{name:28s} trainable {n:>10,}")
    print(f"top stage alone: {top1_params:,} of {total:,} backbone parameters ({top1_params / total:.0%})")
    """, [("my_model = copy.deepcopy(base)\n"
           "top1_params = sum(p.numel() for p in my_model.backbone.stages[-1].parameters())", "nothing in my_model"),
          ("my_model = copy.deepcopy(base)\nfinetune.unfreeze(my_model.backbone, 2)\n"
           "top1_params = sum(p.numel() for p in my_model.backbone.parameters() if p.requires_grad)", "2 stages"),
          ("my_model = copy.deepcopy(base)\nfinetune.unfreeze(my_model.backbone, 1)\n"
           "top1_params = sum(p.numel() for p in my_model.backbone.parameters())", "frozen ones too"),
          ("base = copy.deepcopy(base)\nmy_model = base\nfinetune.unfreeze(my_model.backbone, 1)\n"
           "top1_params = sum(p.numel() for p in my_model.backbone.parameters() if p.requires_grad)", "base itself")])
def _top1(ns, my_model, top1_params):
    base = ns["base"]
    if my_model is base:
        raise Wrong("you unfroze base itself: the other experiments start from it; rerun the cell that builds base, "
                    "then work on copy.deepcopy(base)")
    bb = my_model.backbone
    flags = [any(p.requires_grad for p in s.parameters()) for s in bb.stages]
    if not any(flags):
        raise Wrong("nothing in my_model's backbone is trainable: call finetune.unfreeze(my_model.backbone, 1)")
    if flags != [False] * (len(flags) - 1) + [True] or not all(p.requires_grad for p in bb.stages[-1].parameters()):
        raise Wrong(f"{sum(flags)} stages are trainable; only the top one should be")
    trainable = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    if top1_params == sum(p.numel() for p in bb.parameters()):
        raise Wrong("that counts every backbone parameter, the frozen ones too: keep those with requires_grad")
    if top1_params != trainable:
        raise Wrong("count the parameters with requires_grad in my_model.backbone")
    return f"{top1_params:,} parameters: the top stage alone"
