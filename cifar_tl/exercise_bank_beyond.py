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
    print(f"{len(train_ds.classes)} 个类别中的前 5 个占了 {probs.sum():.0%} 的概率：无论照片里是什么，"
          "模型都只会用它认识的某个类别来回答")
    """), [(_MAKE_PHOTO + "my_top5 = widgets.top_k(model, example, cfg.image_size, device)", "bundled example"),
          ("from cifar_tl import widgets\nimage_path = None\nmy_top5 = widgets.top_k(model, example, cfg.image_size, device)",
           "image_path is still None"),
          (_MAKE_PHOTO + "p, i = widgets.top_k(model, image_path, cfg.image_size, device, k=3)\nmy_top5 = (p, i)", "top 5")])
def _top5(ns, my_top5):
    from . import widgets

    path, example = ns.get("image_path"), ns.get("example")
    if not path:
        raise Wrong("image_path is still None: set it to your photo in the parameters cell, run the notebook again, "
                    "then call top_k on image_path",
                    "image_path 仍是 None：在参数单元格里把它设为你的照片，重新运行笔记本，再对 image_path 调用 top_k")
    path = Path(path)
    if example is not None and path.resolve() == Path(example).resolve():
        raise Wrong("image_path is the bundled example; point it to a photo of yours",
                    "image_path 是自带的示例图片；请让它指向你自己的照片")
    if not path.is_file():
        raise Wrong(f"no file at {path}", f"{path} 处没有文件")
    if not isinstance(my_top5, (tuple, list)) or len(my_top5) != 2:
        raise Wrong("top_k returns (probabilities, class indices): keep both",
                    "top_k 返回（概率, 类别索引）：两者都要保留")
    probs, idx = (torch.as_tensor(t) for t in my_top5)
    if len(idx) != 5:
        raise Wrong(f"{len(idx)} classes: the top 5 (k=5, top_k's default)",
                    f"{len(idx)} 个类别：要的是前 5 个（k=5，top_k 的默认值）")
    model, cfg, device = ns["model"], ns["cfg"], ns.get("device", "cpu")
    truth_p, truth_i = widgets.top_k(model, path, cfg.image_size, device)
    if torch.equal(idx, truth_i) and torch.allclose(probs, truth_p, atol=1e-5):
        names = ns["train_ds"].classes
        top1, p1 = names[int(idx[0])], float(probs[0])
        return f"top-1 for {path.name}: {top1} ({p1:.0%})", f"{path.name} 的第一名：{top1}（{p1:.0%}）"
    if example is not None:
        ex_p, ex_i = widgets.top_k(model, example, cfg.image_size, device)
        if torch.equal(idx, ex_i) and torch.allclose(probs, ex_p, atol=1e-5):
            raise Wrong("these are the bundled example's top 5, not image_path's: pass image_path to top_k",
                        "这是自带示例图片的前 5 个类别，不是 image_path 的：把 image_path 传给 top_k")
    raise Wrong("not the top 5 that the model gives for image_path: widgets.top_k(model, image_path, cfg.image_size, device)",
                "这不是模型对 image_path 给出的前 5 个类别：widgets.top_k(model, image_path, cfg.image_size, device)")


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
    n_new = len(list(new_class.iterdir()))
    n_train = sum(t == my_train.classes.index("my_class") for t in my_train.targets)
    print(f"{len(my_train.classes)} classes now · 现在共 {len(my_train.classes)} 个类别: {my_train.classes}")
    print(f"the new class has {n_new} images, {n_train} of them in the training split "
          "(the others hold out validation and test photos)")
    print(f"新类别有 {n_new} 张图像，其中 {n_train} 张在训练集里（其余的留作验证集和测试集的照片）")
    """), [("from cifar_tl import data\nmy_train = data.build_datasets(folder_cfg).train", "still holds"),
          (_COPY_FOLDER.format(name="w_splits", n=6) + "my_train = data.build_datasets(folder_cfg)", "all three splits"),
          (_COPY_FOLDER.format(name="w_small", n=3) + "my_train = data.build_datasets(folder_cfg).train", "at least 5")])
def _new_class(ns, my_train):
    folder, before = Path(ns["folder"]), ns["folder_classes"]
    if isinstance(my_train, tuple):
        raise Wrong("that is all three splits (train, val, test); keep the training split, .train",
                    "这是全部三个划分（训练集、验证集、测试集）；只保留训练集，.train")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    counts = {d.name: sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir()) for d in subdirs}
    if len(subdirs) <= before:
        raise Wrong(f"the folder still holds {len(subdirs)} class folders: make a new subfolder of `folder` "
                    "with 5 or more images, then rebuild",
                    f"文件夹里仍然只有 {len(subdirs)} 个类别文件夹：在 `folder` 下新建一个子文件夹，"
                    "放入 5 张或更多图像，然后重新构建")
    small = {name: n for name, n in counts.items() if n < 5}
    if small:
        name, n = next(iter(small.items()))
        raise Wrong(f"{name}/ holds {n} images: a class needs at least 5 (some go to validation and test)",
                    f"{name}/ 里只有 {n} 张图像：一个类别至少需要 5 张（有一些要分给验证集和测试集）")
    classes = list(getattr(my_train, "classes", []))
    if sorted(classes) != sorted(counts):
        raise Wrong(f"my_train has {len(classes)} classes, the folder {len(counts)}: rebuild with "
                    "data.build_datasets(folder_cfg) after adding the folder",
                    f"my_train 有 {len(classes)} 个类别，文件夹里有 {len(counts)} 个：添加文件夹之后，"
                    "用 data.build_datasets(folder_cfg) 重新构建")
    if len(classes) != before + 1:
        raise Wrong(f"{len(classes)} classes: add exactly one class to the {before} the folder had",
                    f"{len(classes)} 个类别：在文件夹原有的 {before} 个类别之外，恰好再加一个类别")
    return f"{len(classes)} classes now: {classes}", f"现在共 {len(classes)} 个类别：{classes}"


# ---- 08 cached features ----------------------------------------------------------------------
@register("08.1", "tutorial_passes cached_passes", """
    def tutorial_passes(N, E):
        return (N // 8) * 8 * E  # every epoch, whole batches of 8 (drop_last)

    def cached_passes(N, E):
        return N if E == 1 else 2 * N  # 1 epoch samples one view per image; from 3 epochs on, both views, once

    from cifar_tl import features
    print("50,000 张图像训练 E 轮时，教程与特征缓存各要经过主干网络多少次：")
    for E in (1, 2, 3, 10):
        cached = int(features.plan_views(50_000, 0, E).sum())
        print(f"50,000 images, {E:2d} epoch(s): tutorial {tutorial_passes(50_000, E):>7,}, cached {cached:>7,} backbone passes")
    print("2 epochs sample about 1.5 views per image; from 3 epochs on, the cache costs the same however long you train")
    print("训练 2 轮时每张图像约采样 1.5 个视图；从 3 轮起，无论训练多久，特征缓存的代价都一样")
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
            hint, hint_zh = (("only whole batches of 8 go through (drop_last)",
                              "只有凑满 8 张的完整批次才会送进去（drop_last）") if got == n * e
                             else ("the tutorial pushes every image through the backbone every epoch",
                                   "教程每一轮都把每张图像送过主干网络"))
            raise Wrong(f"tutorial_passes({n}, {e}) = {got}, counting says {truth}: {hint}",
                        f"tutorial_passes({n}, {e}) = {got}，实际计数是 {truth}：{hint_zh}")
    for n, e in ((1000, 1), (1000, 3), (1000, 10)):
        got, truth = cached_passes(n, e), int(plan_views(n, ns.get("cfg").seed if "cfg" in ns else 0, e).sum())
        if got != truth:
            hint, hint_zh = (("one epoch samples one view per image, and only the sampled views are extracted",
                              "训练一轮时每张图像只采样一个视图，而且只抽取被采样到的视图") if e == 1
                             else ("from 3 epochs on, every view is extracted once each, however many epochs follow",
                                   "从 3 轮起，每个视图各抽取一次，之后无论再训练多少轮都不再增加"))
            raise Wrong(f"cached_passes({n}, {e}) = {got}, the cache extracts {truth}: {hint}",
                        f"cached_passes({n}, {e}) = {got}，特征缓存实际抽取 {truth} 次：{hint_zh}")
    measured = ns.get("backbone_images", {})
    if "tutorial" in measured and "timing_images" in ns:
        if tutorial_passes(ns["timing_images"], ns["timing_epochs"]) != measured["tutorial"]:
            raise Wrong(f"tutorial_passes disagrees with the {measured['tutorial']} images counted above",
                        f"tutorial_passes 与上面统计到的 {measured['tutorial']} 张图像不一致")
    t1, c1, t10, c10 = (tutorial_passes(50_000, 1), cached_passes(50_000, 1),
                        tutorial_passes(50_000, 10), cached_passes(50_000, 10))
    return (f"the tutorial's own run (50,000 images): 1 epoch {t1:,} vs {c1:,}; 10 epochs {t10:,} vs {c10:,}",
            f"教程自己的训练（50,000 张图像）：1 轮 {t1:,} 对 {c1:,}；10 轮 {t10:,} 对 {c10:,}")


def _default(ns) -> tuple:
    cfg = ns["cfg"]
    return (cfg.hidden[0], len(cfg.hidden), cfg.lr, ns.get("epochs") or cfg.epochs)


@register("08.2", "tried my_design", """
    default = (cfg.hidden[0], len(cfg.hidden), cfg.lr, epochs)
    candidates = [default, (1024, 1, 1e-3, epochs), (512, 1, 1e-3, epochs), (256, 2, 3e-3, epochs)]
    tried = {design: accuracy_of(design) for design in candidates}  # validation accuracy
    my_design = max(tried, key=tried.get)
    print("各个设计（隐藏层宽度、深度、学习率）在验证集上的准确率：")
    for design, score in tried.items():
        print(f"hidden {design[0]:4d}, depth {design[1]}, lr {design[2]:g}: validation {score:.1%}")
    se = (tried[my_design] * (1 - tried[my_design]) / len(val_y)) ** 0.5
    gain = tried[my_design] - tried[default]
    print(f"chosen on validation: {my_design}; one standard error on {len(val_y)} images is {se:.1%}, "
          f"so a gain of {gain:.1%} over the default {'is' if gain > se else 'is not'} beyond noise")
    print(f"在验证集上选出：{my_design}；{len(val_y)} 张图像上的一个标准误是 {se:.1%}，"
          f"所以相对默认设计 {gain:.1%} 的提升{'超出了' if gain > se else '没有超出'}噪声")
    print("the test split stays untouched here: it measures the chosen head once, at the end")
    print("这里完全不碰测试集：它只在最后对选定的分类头测量一次")
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
        raise Wrong("try at least 3 designs: tried = {(hidden, depth, lr, epochs): validation accuracy, ...}",
                    "至少尝试 3 个设计：tried = {(hidden, depth, lr, epochs): 验证集准确率, ...}")
    default = _default(ns)
    if not any(tuple(d) == default or (tuple(d)[:2] == default[:2] and math.isclose(d[2], default[2]) and d[3] == default[3])
               for d in tried):
        raise Wrong(f"include the default, {default}, to compare against",
                    f"把默认设计 {default} 也包括进来，作为比较的基准")
    truths = judge_table(tried, lambda d: head_run(ns, *d), "design", what_zh="设计")
    judge_best(tried, tuple(my_design), "design", what_zh="设计")
    gain = truths[tuple(my_design)] - next(v for d, v in truths.items() if tuple(d)[:2] == default[:2] and d[3] == default[3])
    se = (truths[tuple(my_design)] * (1 - truths[tuple(my_design)]) / len(ns["val_y"])) ** 0.5
    return (f"{tuple(my_design)} is the best of your {len(tried)} on validation ({gain:+.1%} over the default; "
            f"one standard error is {se:.1%})",
            f"{tuple(my_design)} 是你尝试的 {len(tried)} 个设计中在验证集上最好的（相对默认设计 {gain:+.1%}；"
            f"一个标准误是 {se:.1%}）")


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
    print(f"从顶部数第二个阶段：{second_stage_lr:.0e}，比分类头慢 {1e-3 / second_stage_lr:.0f} 倍："
          "阶段越低，它的特征越通用，就越不该大幅改动")
    """, [("second_stage_lr = 1e-3 * 0.1", "top stage"),
          ("second_stage_lr = 1e-3", "head's"),
          ("second_stage_lr = 1e-3 * 0.1 ** 3", "one decay")])
def _second_stage(ns, second_stage_lr):
    a = float(second_stage_lr)
    base = ns["base"]
    lrs = list(_group_lrs(base, 2, 1e-3, 0.1).values())  # head, top stage, second stage, outside
    truth = lrs[2]
    if math.isclose(a, truth, rel_tol=1e-9):
        return f"{a:.0e}: {1e-3 / a:.0f} times slower than the head", f"{a:.0e}：比分类头慢 {1e-3 / a:.0f} 倍"
    if math.isclose(a, lrs[1], rel_tol=1e-9):
        raise Wrong("that is the top stage's rate; the second from the top is one lr_decay further down",
                    "这是顶部阶段的学习率；从顶部数第二个阶段还要再往下一级（多一次 lr_decay）")
    if math.isclose(a, 1e-3, rel_tol=1e-9):
        raise Wrong("that is the head's rate; each stage down multiplies by lr_decay once more",
                    "这是分类头的学习率；每往下一个阶段，就再乘一次 lr_decay")
    raise Wrong("count from the head: the head lr, the top stage lr * lr_decay, the one below it one decay more "
                "(not one decay too many or too few)",
                "从分类头数起：分类头用 lr，顶部阶段用 lr * lr_decay，再下面一个阶段再多衰减一次"
                "（不要多乘或少乘一次衰减）")


@register("09.2", "my_model top1_params", """
    import copy
    from cifar_tl import finetune
    my_model = copy.deepcopy(base)  # a copy: base stays frozen for the other experiments
    finetune.unfreeze(my_model.backbone, 1)
    top1_params = sum(p.numel() for p in my_model.backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in my_model.backbone.parameters())
    for name, stage in zip(my_model.backbone.stage_names, my_model.backbone.stages):
        n = sum(p.numel() for p in stage.parameters() if p.requires_grad)
        print(f"{name:28s} trainable · 可训练 {n:>10,}")
    print(f"top stage alone: {top1_params:,} of {total:,} backbone parameters ({top1_params / total:.0%})")
    print(f"仅顶部阶段：主干网络 {total:,} 个参数中的 {top1_params:,} 个（{top1_params / total:.0%}）")
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
                    "then work on copy.deepcopy(base)",
                    "你解冻的是 base 本身：其他实验都从它开始；重新运行构建 base 的单元格，"
                    "然后在 copy.deepcopy(base) 上操作")
    bb = my_model.backbone
    flags = [any(p.requires_grad for p in s.parameters()) for s in bb.stages]
    if not any(flags):
        raise Wrong("nothing in my_model's backbone is trainable: call finetune.unfreeze(my_model.backbone, 1)",
                    "my_model 的主干网络中没有任何可训练的参数：调用 finetune.unfreeze(my_model.backbone, 1)")
    if flags != [False] * (len(flags) - 1) + [True] or not all(p.requires_grad for p in bb.stages[-1].parameters()):
        raise Wrong(f"{sum(flags)} stages are trainable; only the top one should be",
                    f"有 {sum(flags)} 个阶段可训练；应该只有顶部那一个")
    trainable = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    if top1_params == sum(p.numel() for p in bb.parameters()):
        raise Wrong("that counts every backbone parameter, the frozen ones too: keep those with requires_grad",
                    "这把主干网络的全部参数都算进去了，冻结的也算了：只保留 requires_grad 为真的参数")
    if top1_params != trainable:
        raise Wrong("count the parameters with requires_grad in my_model.backbone",
                    "统计 my_model.backbone 中 requires_grad 为真的参数")
    return f"{top1_params:,} parameters: the top stage alone", f"{top1_params:,} 个参数：仅顶部阶段"
