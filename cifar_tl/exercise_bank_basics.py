"""The exercises of notebooks 00-02 (setup, dataset, loader): checks, solutions, wrong answers."""

from __future__ import annotations

import math

import torch

from .exercises import Wrong, register


def _close(a, b, rel: float = 1e-6) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def _number(answer, what: str, what_zh: str) -> float:
    try:
        return float(answer)
    except (TypeError, ValueError):
        kind = type(answer).__name__
        raise Wrong(f"{what} is one number; this is a {kind}",
                    f"{what_zh}是一个数；这里给的是 {kind}") from None


# ---- 00 setup --------------------------------------------------------------------------------
@register("00.1", "my_speedup", """
    my_speedup = fast_rate / tutorial_rate
    print(f"batched: {fast_rate:.0f} images/s; the tutorial's per-image path: {tutorial_rate:.0f} images/s")
    print(f"按批次：每秒 {fast_rate:.0f} 张；教程的逐张处理：每秒 {tutorial_rate:.0f} 张")
    print(f"my_speedup = fast_rate / tutorial_rate = {my_speedup:.1f}: the same backbone does {my_speedup:.1f}x "
          "more images per second when it gets them in batches")
    print(f"同一个主干网络按批次输入时，每秒处理的图像数是逐张输入的 {my_speedup:.1f} 倍")
    """, [("my_speedup = tutorial_rate / fast_rate", "slower"),
          ("my_speedup = fast_rate - tutorial_rate", "difference"),
          ("my_speedup = 10.0", "typed-in")])
def _speedup(ns, my_speedup):
    fast, slow = ns["fast_rate"], ns["tutorial_rate"]
    a = _number(my_speedup, "a speed-up", "加速比")
    if _close(a, fast / slow):
        return f"the batched path is {a:.1f}x faster here", f"在这里，按批次处理快了 {a:.1f} 倍"
    if _close(a, slow / fast):
        raise Wrong(f"{a:.3g} is the tutorial's rate over the batched one: how much slower the tutorial is; "
                    "divide the other way",
                    f"{a:.3g} 是教程的速率除以按批次的速率：这是教程慢了多少；反过来除")
    if _close(a, fast - slow):
        raise Wrong("that is a difference of two rates (images per second); 'how many times' is a ratio",
                    "这是两个速率之差（每秒图像数）；“快多少倍”是一个比值")
    raise Wrong(f"{a:.3g} is not what the two rates measured above give (a typed-in number does not follow "
                "a new measurement): write it from fast_rate and tutorial_rate",
                f"{a:.3g} 不是上面测得的两个速率给出的值（手动写入的数字不会随新的测量而更新）："
                "请用 fast_rate 和 tutorial_rate 来写")


@register("00.2", "cpu_pixel_fraction", """
    from cifar_tl import Config
    side = Config.for_profile("cpu").image_size
    cpu_pixel_fraction = (side / 300) ** 2
    print(f"cpu images are {side} px, the tutorial's 300 px: sides {side / 300:.0%}, "
          f"pixels {cpu_pixel_fraction:.0%} (the square: both width and height shrink)")
    print(f"cpu 预设配置的图像边长 {side} px，教程是 300 px：边长为 {side / 300:.0%}，"
          f"像素数为 {cpu_pixel_fraction:.0%}（取平方：宽和高都缩小了）")
    print(f"so about {1 / cpu_pixel_fraction:.1f}x less backbone work per image")
    print(f"所以主干网络处理每张图像的计算量约降为原来的 1/{1 / cpu_pixel_fraction:.1f}")
    """, [("cpu_pixel_fraction = Config.for_profile('cpu').image_size / 300", "sides"),
          ("cpu_pixel_fraction = (300 / Config.for_profile('cpu').image_size) ** 2", "above 1"),
          ("cpu_pixel_fraction = 0.4", "typed")])
def _pixel_fraction(ns, cpu_pixel_fraction):
    from .config import Config

    side = Config.for_profile("cpu").image_size
    a = _number(cpu_pixel_fraction, "a fraction", "比例")
    if _close(a, (side / 300) ** 2):
        return (f"{a:.0%} of the pixels, so roughly {1 / a:.1f}x less backbone work per image",
                f"像素数为原来的 {a:.0%}，主干网络处理每张图像的计算量约降为 1/{1 / a:.1f}")
    if _close(a, side / 300):
        raise Wrong("that is the ratio of the sides; an image has width x height pixels, and both shrink",
                    "这是边长之比；一张图像有 宽 x 高 个像素，两者都缩小了")
    if a > 1:
        raise Wrong(f"{a:.3g} is above 1: that is the tutorial's pixels over the cpu profile's, not a fraction of them",
                    f"{a:.3g} 大于 1：这是教程的像素数除以 cpu 预设配置的像素数，不是占比")
    raise Wrong(f"{a:.3g} does not follow from the size in Config.for_profile('cpu') (a typed number goes stale "
                "when the profile changes): compute it from image_size",
                f"{a:.3g} 与 Config.for_profile('cpu') 中的尺寸对不上（手动写入的数字在预设配置改变后就过时了）："
                "请由 image_size 计算")


# ---- 01 dataset ------------------------------------------------------------------------------
@register("01.1", "same_superclass", """
    group = train_ds.fine_to_coarse[7]
    same_superclass = [name for k, name in enumerate(train_ds.classes) if train_ds.fine_to_coarse[k] == group]
    print(f"class 7, {train_ds.classes[7]!r}, is in the superclass {train_ds.coarse_classes[group]!r} "
          f"with {len(same_superclass) - 1} others: {same_superclass}")
    print(f"第 7 类 {train_ds.classes[7]!r} 属于超类 {train_ds.coarse_classes[group]!r}，"
          f"同一超类里还有另外 {len(same_superclass) - 1} 个细类：{same_superclass}")
    print("mistaking one of these for another is wrong for the fine label, right for the superclass")
    print("把其中一个认成另一个：按细类标签算错，按超类算对")
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
        raise Wrong("one string: the answer is a list of class names",
                    "这是一个字符串：答案应是由类名组成的列表")
    names = list(same_superclass)
    if any(not isinstance(n, str) for n in names):
        raise Wrong("these are class indices (numbers); the exercise asks for their names: train_ds.classes[k]",
                    "这些是类的索引（数字）；题目要的是它们的名字：train_ds.classes[k]")
    superclass = ds.coarse_classes[group]
    if superclass in names:
        raise Wrong(f"{superclass!r} is the superclass's own name; list the fine classes in it",
                    f"{superclass!r} 是超类本身的名字；请列出它包含的细类")
    if len(names) != len(set(names)):
        raise Wrong("a name appears more than once", "有名字出现了不止一次")
    missing, extra = expected - set(names), set(names) - expected
    if extra:
        other = sorted(extra)[0]
        k = ds.classes.index(other) if other in ds.classes else None
        home = ds.coarse_classes[ds.fine_to_coarse[k]] if k is not None else None
        where = f" (in {home!r})" if k is not None else ""
        where_zh = f"（属于 {home!r}）" if k is not None else ""
        raise Wrong(f"{len(extra)} name(s) from another superclass, e.g. {other!r}{where}: "
                    "compare fine_to_coarse[k] with fine_to_coarse[7]",
                    f"有 {len(extra)} 个名字来自别的超类，例如 {other!r}{where_zh}："
                    "把 fine_to_coarse[k] 与 fine_to_coarse[7] 比较")
    if missing == {ds.classes[7]}:
        raise Wrong("class 7's own name is missing: it shares its superclass with itself",
                    "缺少第 7 类自己的名字：它和自己当然同属一个超类")
    if missing:
        raise Wrong(f"{len(missing)} name(s) missing: go through every class k",
                    f"缺少 {len(missing)} 个名字：要遍历每一个类 k")
    others = sorted(expected - {ds.classes[7]})
    return (f"{ds.classes[7]!r} shares the superclass {superclass!r} with {others}",
            f"{ds.classes[7]!r} 与 {others} 同属超类 {superclass!r}")


@register("01.2", "recovered", """
    recovered = normalised * std + mean  # Normalize did (tensor - mean) / std: undo it in reverse order
    # Normalize 做的是 (tensor - mean) / std：按相反的顺序撤销它
    print(f"normalised: {normalised.min():.2f} .. {normalised.max():.2f}; "
          f"recovered: {recovered.min():.2f} .. {recovered.max():.2f} (ToTensor's 0..1)")
    print(f"归一化后：{normalised.min():.2f} .. {normalised.max():.2f}；"
          f"还原后：{recovered.min():.2f} .. {recovered.max():.2f}（即 ToTensor 的 0..1）")
    print(f"largest difference from ToTensor's image: {(recovered - tensor).abs().max():.1e} (rounding only)")
    print(f"与 ToTensor 图像的最大差异：{(recovered - tensor).abs().max():.1e}（只是舍入误差）")
    """, [("recovered = (normalised - mean) / std", "second time"),
          ("recovered = normalised * std", "mean is missing"),
          ("recovered = (normalised + mean) * std", "reverse order")],
    hint=("use normalised, mean and std (shapes [3, H, W], [3, 1, 1], [3, 1, 1])",
          "用 normalised、mean 和 std 来算（形状分别是 [3, H, W]、[3, 1, 1]、[3, 1, 1]）"))
def _recovered(ns, recovered):
    t, n, mean, std = ns["tensor"], ns["normalised"], ns["mean"], ns["std"]
    r = torch.as_tensor(recovered).float()
    if r.shape != t.shape:
        raise Wrong(f"shape {tuple(r.shape)}; ToTensor's image is {tuple(t.shape)}",
                    f"形状是 {tuple(r.shape)}；ToTensor 的图像是 {tuple(t.shape)}")

    def same(x):
        return torch.allclose(r, x, atol=1e-5, rtol=0)

    if same(t):
        low, high = float(r.min()), float(r.max())
        return (f"ToTensor's image again, values {low:.2f} .. {high:.2f}",
                f"又得到了 ToTensor 的图像，取值 {low:.2f} .. {high:.2f}")
    if same(n):
        raise Wrong("that is still the normalised image (it has values below 0)",
                    "这还是归一化后的图像（其中有小于 0 的值）")
    if same((n - mean) / std):
        raise Wrong("you normalised a second time: (x - mean) / std is what Normalize did; apply the inverse operations",
                    "你又归一化了一次：(x - mean) / std 正是 Normalize 做过的；要用它的逆运算")
    if same(n * std):
        raise Wrong("the mean is missing: after multiplying by std, add the mean back",
                    "缺少均值：乘以 std 之后，还要把均值加回来")
    if same((n + mean) * std):
        raise Wrong("undo in reverse order: Normalize subtracted the mean, then divided by std; so multiply first, then add",
                    "要按相反的顺序撤销：Normalize 先减去均值，再除以 std；所以要先乘，再加")
    gap = float((r - t).abs().max())
    raise Wrong(f"it differs from ToTensor's image by up to {gap:.3g}",
                f"它与 ToTensor 的图像最多相差 {gap:.3g}")


# ---- 02 loader -------------------------------------------------------------------------------
@register("02.1", "left_out", """
    batches = len(train_ds) // 32
    left_out = len(train_ds) % 32
    print(f"{len(train_ds)} images = {batches} whole batches of 32 + {left_out} left over; "
          f"drop_last=True leaves those {left_out} out of each epoch (a different {left_out}: the order is shuffled)")
    print(f"{len(train_ds)} 张图像 = {batches} 个 32 张的完整批次 + 剩下的 {left_out} 张；"
          f"drop_last=True 让每轮（epoch）都丢掉这 {left_out} 张（每次是不同的 {left_out} 张：顺序是打乱的）")
    """, [("left_out = len(train_ds) // 32", "number of whole batches"),
          ("left_out = 32 - len(train_ds) % 32", "fill")])
def _left_out(ns, left_out):
    from .data import make_loader

    n = len(ns["train_ds"])
    truth = n - len(make_loader(ns["train_ds"], 32, train=True)) * 32
    if left_out == truth:
        return (f"{left_out} images sit out each epoch (a different {left_out} each time)",
                f"每轮（epoch）有 {left_out} 张图像轮空（每次是不同的 {left_out} 张）")
    mistakes, mistakes_zh = [], []  # one value can match two mistakes (900 images: 28 batches, and 28 more would fill one)
    if left_out == n // 32:
        mistakes.append(f"{left_out} is the number of whole batches, not of images left over")
        mistakes_zh.append(f"{left_out} 是完整批次的个数，不是剩下的图像数")
    if left_out == 32 - truth:
        mistakes.append(f"{left_out} more images would fill one more batch; how many are left over?")
        mistakes_zh.append(f"再有 {left_out} 张图像就能再凑满一个批次；那剩下的是多少张？")
    if mistakes:
        raise Wrong("; or: ".join(mistakes), "；或者：".join(mistakes_zh))
    raise Wrong(f"building the loader and counting says otherwise: {n} images, batches of 32, whole batches only",
                f"构建加载器数一数，结果不是这样：{n} 张图像，每个批次 32 张，只保留完整的批次")


@register("02.2", "once_loader", """
    from collections import Counter
    from cifar_tl import data
    once_loader = data.make_loader(test_ds, 8, train=False)
    counted = Counter(i for batch in once_loader.batch_sampler for i in batch)
    print(f"train=False: {len(counted)} of {len(test_ds)} test images, each seen {sorted(set(counted.values()))} time(s), in order")
    print(f"train=False：测试集的 {len(test_ds)} 张图像中用到了 {len(counted)} 张，"
          f"每张出现 {sorted(set(counted.values()))} 次，按原顺序")
    tutorial_way = data.make_loader(test_ds, 8, train=True)
    seen = Counter(i for batch in tutorial_way.batch_sampler for i in batch)
    print(f"the tutorial's way (shuffle, drop_last): {len(test_ds) - len(seen)} test images never seen, "
          "and a new order each time, so predictions no longer line up with test_ds")
    print(f"教程的做法（shuffle、drop_last）：测试集有 {len(test_ds) - len(seen)} 张图像从未被用到，"
          "而且每次顺序都不同，所以预测结果与 test_ds 对不上了")
    """, [("once_loader = data.make_loader(test_ds, 8, train=True)", "train=False"),
          ("once_loader = data.make_loader(train_ds, 8, train=False)", "training images"),
          ("once_loader = list(range(len(test_ds)))", "DataLoader")])
def _once_loader(ns, once_loader):
    from collections import Counter

    from torch.utils.data import DataLoader

    test_ds = ns["test_ds"]
    if not isinstance(once_loader, DataLoader):
        kind = type(once_loader).__name__
        raise Wrong(f"a {kind}; the answer is a DataLoader (data.make_loader(...)) "
                    "that the check walks through",
                    f"这是一个 {kind}；答案应是一个 DataLoader（data.make_loader(...)），检查会遍历它")
    if once_loader.dataset is not test_ds:
        if once_loader.dataset is ns.get("train_ds"):
            raise Wrong("that loader goes through the training images; the test loop needs test_ds",
                        "这个加载器遍历的是训练集图像；测试循环需要的是 test_ds")
        raise Wrong("that loader does not go through test_ds", "这个加载器遍历的不是 test_ds")
    order = [i for batch in once_loader.batch_sampler for i in batch]
    counts = Counter(order)
    missing, twice = len(test_ds) - len(counts), sum(v > 1 for v in counts.values())
    if missing and once_loader.drop_last:
        raise Wrong(f"drop_last=True: {missing} test images are never tested; a test loader keeps every batch "
                    "(make_loader(..., train=False))",
                    f"drop_last=True：测试集有 {missing} 张图像永远测不到；测试用的加载器要保留每一个批次"
                    "（make_loader(..., train=False)）")
    if missing or twice:
        raise Wrong(f"{missing} test images never seen and {twice} seen more than once",
                    f"测试集有 {missing} 张图像从未出现，{twice} 张出现了不止一次")
    if order != sorted(order):
        raise Wrong("every image once, but shuffled: the predictions no longer line up with test_ds's order; "
                    "a test loader keeps the order (make_loader(..., train=False))",
                    "每张图像都出现了一次，但顺序被打乱了：预测结果与 test_ds 的顺序对不上；"
                    "测试用的加载器要保持顺序（make_loader(..., train=False)）")
    return (f"{len(once_loader)} batches: every one of the {len(test_ds)} test images, once, in order",
            f"{len(once_loader)} 个批次：测试集的 {len(test_ds)} 张图像每张恰好一次，按原顺序")
