"""The exercises of notebooks 00-04 (setup, dataset, loader, transfer, model): checks, solutions, wrong answers."""

from __future__ import annotations

import math

import torch

from .exercises import Wrong, register


def _close(a, b, rel: float = 1e-6) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def _number(answer, what: str) -> float:
    try:
        return float(answer)
    except (TypeError, ValueError):
        raise Wrong(f"{what} is one number; this is a {type(answer).__name__}") from None


# ---- 00 setup --------------------------------------------------------------------------------
@register("00.1", "my_speedup", """
    my_speedup = fast_rate / tutorial_rate
    print(f"batched: {fast_rate:.0f} images/s; the tutorial's per-image path: {tutorial_rate:.0f} images/s")
    print(f"my_speedup = fast_rate / tutorial_rate = {my_speedup:.1f}: the same backbone does {my_speedup:.1f}x "
          "more images per second when it gets them in batches")
    """, [("my_speedup = tutorial_rate / fast_rate", "slower"),
          ("my_speedup = fast_rate - tutorial_rate", "difference"),
          ("my_speedup = 10.0", "typed-in")])
def _speedup(ns, my_speedup):
    fast, slow = ns["fast_rate"], ns["tutorial_rate"]
    a = _number(my_speedup, "a speed-up")
    if _close(a, fast / slow):
        return f"the batched path is {a:.1f}x faster here"
    if _close(a, slow / fast):
        raise Wrong(f"{a:.3g} is the tutorial's rate over the batched one: how much slower the tutorial is; "
                    "divide the other way")
    if _close(a, fast - slow):
        raise Wrong("that is a difference of two rates (images per second); 'how many times' is a ratio")
    raise Wrong(f"{a:.3g} is not what the two rates measured above give (a typed-in number does not follow "
                "a new measurement): write it from fast_rate and tutorial_rate")


@register("00.2", "cpu_pixel_fraction", """
    from cifar_tl import Config
    side = Config.for_profile("cpu").image_size
    cpu_pixel_fraction = (side / 300) ** 2
    print(f"cpu images are {side} px, the tutorial's 300 px: sides {side / 300:.0%}, "
          f"pixels {cpu_pixel_fraction:.0%} (the square: both width and height shrink)")
    print(f"so about {1 / cpu_pixel_fraction:.1f}x less backbone work per image")
    """, [("cpu_pixel_fraction = Config.for_profile('cpu').image_size / 300", "sides"),
          ("cpu_pixel_fraction = (300 / Config.for_profile('cpu').image_size) ** 2", "above 1"),
          ("cpu_pixel_fraction = 0.4", "typed")])
def _pixel_fraction(ns, cpu_pixel_fraction):
    from .config import Config

    side = Config.for_profile("cpu").image_size
    a = _number(cpu_pixel_fraction, "a fraction")
    if _close(a, (side / 300) ** 2):
        return f"{a:.0%} of the pixels, so roughly {1 / a:.1f}x less backbone work per image"
    if _close(a, side / 300):
        raise Wrong("that is the ratio of the sides; an image has width x height pixels, and both shrink")
    if a > 1:
        raise Wrong(f"{a:.3g} is above 1: that is the tutorial's pixels over the cpu profile's, not a fraction of them")
    raise Wrong(f"{a:.3g} does not follow from the size in Config.for_profile('cpu') (a typed number goes stale "
                "when the profile changes): compute it from image_size")


# ---- 01 dataset ------------------------------------------------------------------------------
@register("01.1", "same_superclass", """
    group = train_ds.fine_to_coarse[7]
    same_superclass = [name for k, name in enumerate(train_ds.classes) if train_ds.fine_to_coarse[k] == group]
    print(f"class 7, {train_ds.classes[7]!r}, is in the superclass {train_ds.coarse_classes[group]!r} "
          f"with {len(same_superclass) - 1} others: {same_superclass}")
    print("mistaking one of these for another is wrong for the fine label, right for the superclass")
    """, [("same_superclass = [k for k in range(len(train_ds.classes)) "
           "if train_ds.fine_to_coarse[k] == train_ds.fine_to_coarse[7]]", "indices"),
          ("same_superclass = [n for k, n in enumerate(train_ds.classes) "
           "if train_ds.fine_to_coarse[k] == train_ds.fine_to_coarse[7] and k != 7]", "own name"),
          ("same_superclass = train_ds.classes[7:12]", "another superclass")])
def _same_superclass(ns, same_superclass):
    ds = ns["train_ds"]
    group = ds.fine_to_coarse[7]
    expected = {name for k, name in enumerate(ds.classes) if ds.fine_to_coarse[k] == group}
    if isinstance(same_superclass, str):
        raise Wrong("one string: the answer is a list of class names")
    names = list(same_superclass)
    if any(not isinstance(n, str) for n in names):
        raise Wrong("these are class indices (numbers); the exercise asks for their names: train_ds.classes[k]")
    if ds.coarse_classes[group] in names:
        raise Wrong(f"{ds.coarse_classes[group]!r} is the superclass's own name; list the fine classes in it")
    if len(names) != len(set(names)):
        raise Wrong("a name appears more than once")
    missing, extra = expected - set(names), set(names) - expected
    if extra:
        other = sorted(extra)[0]
        k = ds.classes.index(other) if other in ds.classes else None
        where = f" (in {ds.coarse_classes[ds.fine_to_coarse[k]]!r})" if k is not None else ""
        raise Wrong(f"{len(extra)} name(s) from another superclass, e.g. {other!r}{where}: "
                    "compare fine_to_coarse[k] with fine_to_coarse[7]")
    if missing == {ds.classes[7]}:
        raise Wrong("class 7's own name is missing: it shares its superclass with itself")
    if missing:
        raise Wrong(f"{len(missing)} name(s) missing: go through every class k")
    return f"{ds.classes[7]!r} shares the superclass {ds.coarse_classes[group]!r} with {sorted(expected - {ds.classes[7]})}"


@register("01.2", "recovered", """
    recovered = normalised * std + mean  # Normalize did (tensor - mean) / std: undo it in reverse order
    print(f"normalised: {normalised.min():.2f} .. {normalised.max():.2f}; "
          f"recovered: {recovered.min():.2f} .. {recovered.max():.2f} (ToTensor's 0..1)")
    print(f"largest difference from ToTensor's image: {(recovered - tensor).abs().max():.1e} (rounding only)")
    """, [("recovered = (normalised - mean) / std", "second time"),
          ("recovered = normalised * std", "mean is missing"),
          ("recovered = (normalised + mean) * std", "reverse order")],
    hint=("use normalised, mean and std (shapes [3, H, W], [3, 1, 1], [3, 1, 1])", ""))
def _recovered(ns, recovered):
    t, n, mean, std = ns["tensor"], ns["normalised"], ns["mean"], ns["std"]
    r = torch.as_tensor(recovered).float()
    if r.shape != t.shape:
        raise Wrong(f"shape {tuple(r.shape)}; ToTensor's image is {tuple(t.shape)}")

    def same(x):
        return torch.allclose(r, x, atol=1e-5, rtol=0)

    if same(t):
        return f"ToTensor's image again, values {float(r.min()):.2f} .. {float(r.max()):.2f}"
    if same(n):
        raise Wrong("that is still the normalised image (it has values below 0)")
    if same((n - mean) / std):
        raise Wrong("you normalised a second time: (x - mean) / std is what Normalize did; apply the inverse operations")
    if same(n * std):
        raise Wrong("the mean is missing: after multiplying by std, add the mean back")
    if same((n + mean) * std):
        raise Wrong("undo in reverse order: Normalize subtracted the mean, then divided by std; so multiply first, then add")
    raise Wrong(f"it differs from ToTensor's image by up to {float((r - t).abs().max()):.3g}")


# ---- 02 loader -------------------------------------------------------------------------------
@register("02.1", "left_out", """
    batches = len(train_ds) // 32
    left_out = len(train_ds) % 32
    print(f"{len(train_ds)} images = {batches} whole batches of 32 + {left_out} left over; "
          f"drop_last=True leaves those {left_out} out of each epoch (a different {left_out}: the order is shuffled)")
    """, [("left_out = len(train_ds) // 32", "number of whole batches"),
          ("left_out = 32 - len(train_ds) % 32", "fill")])
def _left_out(ns, left_out):
    from .data import make_loader

    n = len(ns["train_ds"])
    truth = n - len(make_loader(ns["train_ds"], 32, train=True)) * 32
    if left_out == truth:
        return f"{left_out} images sit out each epoch (a different {left_out} each time)"
    mistakes = []  # one value can match two mistakes (900 images: 28 batches, and 28 more would fill one)
    if left_out == n // 32:
        mistakes.append(f"{left_out} is the number of whole batches, not of images left over")
    if left_out == 32 - truth:
        mistakes.append(f"{left_out} more images would fill one more batch; how many are left over?")
    if mistakes:
        raise Wrong("; or: ".join(mistakes))
    raise Wrong(f"building the loader and counting says otherwise: {n} images, batches of 32, whole batches only")


@register("02.2", "once_loader", """
    from collections import Counter
    from cifar_tl import data
    once_loader = data.make_loader(test_ds, 8, train=False)
    counted = Counter(i for batch in once_loader.batch_sampler for i in batch)
    print(f"train=False: {len(counted)} of {len(test_ds)} test images, each seen {sorted(set(counted.values()))} time(s), in order")
    tutorial_way = data.make_loader(test_ds, 8, train=True)
    seen = Counter(i for batch in tutorial_way.batch_sampler for i in batch)
    print(f"the tutorial's way (shuffle, drop_last): {len(test_ds) - len(seen)} test images never seen, "
          "and a new order each time, so predictions no longer line up with test_ds")
    """, [("once_loader = data.make_loader(test_ds, 8, train=True)", "train=False"),
          ("once_loader = data.make_loader(train_ds, 8, train=False)", "training images"),
          ("once_loader = list(range(len(test_ds)))", "DataLoader")])
def _once_loader(ns, once_loader):
    from collections import Counter

    from torch.utils.data import DataLoader

    test_ds = ns["test_ds"]
    if not isinstance(once_loader, DataLoader):
        raise Wrong(f"a {type(once_loader).__name__}; the answer is a DataLoader (data.make_loader(...)) "
                    "that the check walks through")
    if once_loader.dataset is not test_ds:
        if once_loader.dataset is ns.get("train_ds"):
            raise Wrong("that loader goes through the training images; the test loop needs test_ds")
        raise Wrong("that loader does not go through test_ds")
    order = [i for batch in once_loader.batch_sampler for i in batch]
    counts = Counter(order)
    missing, twice = len(test_ds) - len(counts), sum(v > 1 for v in counts.values())
    if missing and once_loader.drop_last:
        raise Wrong(f"drop_last=True: {missing} test images are never tested; a test loader keeps every batch "
                    "(make_loader(..., train=False))")
    if missing or twice:
        raise Wrong(f"{missing} test images never seen and {twice} seen more than once")
    if order != sorted(order):
        raise Wrong("every image once, but shuffled: the predictions no longer line up with test_ds's order; "
                    "a test loader keeps the order (make_loader(..., train=False))")
    return f"{len(once_loader)} batches: every one of the {len(test_ds)} test images, once, in order"


# ---- 03 transfer learning ---------------------------------------------------------------------
@register("03.1", "my_pooled", """
    my_pooled = maps[last].mean(dim=(2, 3))  # [1, C, H, W] -> [1, C]
    fmap = maps[last]
    print(f"last stage: {tuple(fmap.shape)} -> pooled {tuple(my_pooled.shape)}: "
          f"{fmap.shape[2]} x {fmap.shape[3]} positions averaged into one number per channel")
    print("the head sees only these numbers: where in the image a pattern was is averaged away")
    """, [("my_pooled = maps[last].mean(dim=1)", "channels"),
          ("my_pooled = maps[last].mean(dim=(2, 3))[0]", "batch"),
          ("my_pooled = maps[last].flatten(1)", "every position")])
def _pooled(ns, my_pooled):
    fmap = ns["maps"][ns["last"]]
    a = torch.as_tensor(my_pooled)
    truth = fmap.mean(dim=(2, 3))
    if a.shape == truth.shape and torch.allclose(a, truth, atol=1e-6):
        return f"{a.shape[1]} numbers, one per channel"
    if a.shape == fmap.mean(dim=1).shape and torch.allclose(a, fmap.mean(dim=1), atol=1e-6):
        raise Wrong("averaged over the channels (dim 1): one number per position; average over height and width")
    if a.numel() == truth.numel() and torch.allclose(a.flatten(), truth.flatten(), atol=1e-6):
        raise Wrong(f"the right numbers in shape {tuple(a.shape)}: keep the batch dimension, [1, C]")
    if a.numel() == fmap.numel():
        raise Wrong("that keeps every position of the map; pooling averages them away, to [1, C]")
    raise Wrong(f"shape {tuple(a.shape)}: average the [1, C, H, W] map over dims 2 and 3, to [1, C]"
                if a.shape != truth.shape else "the right shape, other numbers: a mean over height and width")


@register("03.2", "nn_superclass", """
    nn_superclass = nearest_neighbour_accuracy(z, torch.tensor(coarse))
    print(f"nearest neighbour in the same superclass: {nn_superclass:.1%} (chance: 1 in 20, 5%); "
          f"in the same fine class: {nn_features:.1%} (chance 1%)")
    print("a neighbour of the same fine class is also in the same superclass, so the first can only be higher")
    """, [("nn_superclass = nearest_neighbour_accuracy(z, labels)", "fine-class"),
          ("nn_superclass = 1 / 20", "chance")])
def _nn_superclass(ns, nn_superclass):
    truth = ns["nearest_neighbour_accuracy"](ns["z"], torch.as_tensor(ns["coarse"]))
    a = _number(nn_superclass, "an accuracy")
    if _close(a, truth, 1e-9):
        return f"{a:.1%} in the same superclass (chance 5%; fine class: {ns['nn_features']:.1%})"
    if _close(a, ns["nn_features"], 1e-9):
        raise Wrong("that is the fine-class accuracy, nn_features: pass the superclass labels, coarse")
    if _close(a, 1 / 20):
        raise Wrong("1/20 is chance, the baseline to compare with: measure the neighbours instead")
    raise Wrong(f"{a:.4g} is not what nearest_neighbour_accuracy(z, ...) gives with the superclass labels")


# ---- 04 model --------------------------------------------------------------------------------
@register("04.1", "my_count", """
    d, c = model.backbone.num_features, len(train_ds.classes)
    my_count = (d * 128 + 128) + (128 * c + c)  # two Linear layers, weights + biases
    print(f"d = {d}, c = {c}: ({d} x 128 + 128) + (128 x {c} + {c}) = {my_count:,} parameters")
    tutorial = models.count_parameters(model.head)["trainable"]
    print(f"the tutorial's head (two hidden layers of 256): {tutorial:,}; almost all of it is the first layer, d x width")
    """, [("d, c = model.backbone.num_features, len(train_ds.classes)\nmy_count = d * 128 + 128 * c", "biases"),
          ("d, c = model.backbone.num_features, len(train_ds.classes)\nmy_count = (d * 128 + 128) * (128 * c + c)", "add"),
          ("my_count = models.count_parameters(model.head)['trainable']", "two hidden layers")])
def _count(ns, my_count):
    from .models import MLPHead, count_parameters

    d, c = ns["model"].backbone.num_features, len(ns["train_ds"].classes)
    truth = count_parameters(MLPHead(d, c, hidden=(128,)))["trainable"]
    if my_count == truth:
        return f"{my_count:,} parameters"
    if my_count == d * 128 + 128 * c:
        raise Wrong(f"the biases are missing: each Linear(a, b) also has b of them ({128 + c} here)")
    if my_count == (d * 128 + 128) * (128 * c + c):
        raise Wrong("a product: the layers' counts add up, they do not multiply")
    if my_count == count_parameters(ns["model"].head)["trainable"]:
        raise Wrong("that is the notebook's head, with two hidden layers of 256; this one has one of 128")
    raise Wrong("count both Linear layers, d -> 128 and 128 -> c, weights and biases")


@register("04.2", "my_model", """
    my_backbone = models.build_backbone("resnet18", weights=None)
    my_model = models.TransferModel(my_backbone, models.MLPHead(my_backbone.num_features, 100))
    with torch.no_grad():
        scores = my_model.eval()(torch.randn(2, 3, 64, 64))
    counts = models.count_parameters(my_model)
    print(f"resnet18 gives {my_backbone.num_features} features (this notebook's {model.backbone.name}: "
          f"{model.backbone.num_features}), so its head starts at {my_backbone.num_features}; scores {tuple(scores.shape)}")
    print(f"trainable {counts['trainable']:,} (the head), frozen {counts['frozen']:,} (the backbone)")
    """, [("my_model = models.TransferModel(models.build_backbone('resnet18', weights=None), models.MLPHead(1280, 100))",
           "expects 1280"),
          ("my_model = model", "notebook's model")])
def _resnet_model(ns, my_model):
    from .models import TransferModel

    if my_model is ns.get("model"):
        raise Wrong("that is the notebook's model; build a new one with a resnet18 backbone")
    if not isinstance(my_model, TransferModel):
        raise Wrong(f"a {type(my_model).__name__}; the answer is models.TransferModel(backbone, head)")
    name = getattr(my_model.backbone, "name", "?")
    if name != "resnet18":
        raise Wrong(f"the backbone is {name}, not resnet18")
    first = next(m for m in my_model.head.modules() if isinstance(m, torch.nn.Linear))
    if first.in_features != my_model.backbone.num_features:
        raise Wrong(f"the head expects {first.in_features} features, resnet18 gives {my_model.backbone.num_features}: "
                    "size the head with the backbone's num_features")
    was = my_model.training
    with torch.no_grad():
        shape = tuple(my_model.eval()(torch.randn(2, 3, 64, 64)).shape)
    my_model.train(was)
    if shape != (2, 100):
        raise Wrong(f"2 images give scores of shape {shape}, not (2, 100): the head's last layer has 100 outputs")
    return f"resnet18: {my_model.backbone.num_features} features -> 100 scores"
