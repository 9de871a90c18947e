"""The exercises of notebook 06 (testing): checks on the test set's predictions, solutions, wrong answers."""

from __future__ import annotations

import math

import torch

from .exercises import Wrong, register


# ---- 06 testing ------------------------------------------------------------------------------
def _to_coarse(ns):
    return torch.tensor(ns["test_ds"].fine_to_coarse)


def _siblings(c: torch.Tensor) -> torch.Tensor:
    """For each fine class, another of its superclass: all wrong as fine classes, all right as superclasses."""
    return torch.tensor([next(j for j in range(len(c)) if j != k and c[j] == c[k]) for k in range(len(c))])


@register("06.1", "superclass_accuracy", """
    def superclass_accuracy(preds, targets):
        to_coarse = torch.tensor(test_ds.fine_to_coarse)  # fine class -> its superclass
        return (to_coarse[preds] == to_coarse[targets]).float().mean().item()

    mine = superclass_accuracy(ev.preds, ev.targets)
    print(f"superclass accuracy {mine:.1%}, fine-class accuracy {ev.accuracy:.1%}: "
          f"{mine - ev.accuracy:.1%} of the test images get a wrong class of the right superclass")
    print(f"超类准确率 {mine:.1%}，细类准确率 {ev.accuracy:.1%}："
          f"{mine - ev.accuracy:.1%} 的测试集图像被判成了正确超类中的错误细类")
    """, [("def superclass_accuracy(preds, targets):\n    return (preds == targets).float().mean().item()", "fine-class"),
          ("def superclass_accuracy(preds, targets):\n    to_coarse = torch.tensor(test_ds.fine_to_coarse)\n"
           "    return (to_coarse[preds] == targets).float().mean().item()", "targets too"),
          ("def superclass_accuracy(preds, targets):\n    to_coarse = torch.tensor(test_ds.fine_to_coarse)\n"
           "    return 100 * (to_coarse[preds] == to_coarse[targets]).float().mean().item()", "fraction")])
def _superclass_accuracy(ns, superclass_accuracy):
    ev, c = ns["ev"], _to_coarse(ns)
    every = torch.arange(len(c))
    # Made-up cases first, each telling one mistake apart: every image right (only a one-sided mapping
    # misses it), every image taken for another class of its superclass (only the fine-class accuracy
    # misses it); then the test set (on smoke superclass and fine-class accuracy can be one number).
    for preds, targets in ((every, every), (_siblings(c), every), (ev.preds, ev.targets)):
        a = float(superclass_accuracy(preds, targets))
        if math.isclose(a, (c[preds] == c[targets]).float().mean().item(), abs_tol=1e-6):
            continue
        if math.isclose(a, (preds == targets).float().mean().item(), abs_tol=1e-6):
            raise Wrong("that is the fine-class accuracy: images taken for another class of their own superclass "
                        "count as right; map predictions and targets to superclasses first",
                        "这是细类准确率：被判成同一超类中另一个类别的图像也算对；要先把预测和真实标签都映射到超类")
        if any(math.isclose(a, v, abs_tol=1e-6) for v in ((c[preds] == targets).float().mean().item(),
                                                          (preds == c[targets]).float().mean().item())):
            raise Wrong("only one side mapped to superclasses: map the targets too (and the predictions), then compare",
                        "只有一边映射到了超类：真实标签也要映射（预测同样要映射），然后再比较")
        if a > 1:
            raise Wrong("a fraction, 0..1, not a percentage", "应是比例，取值 0..1，而不是百分数")
        raise Wrong("compare the superclass of each prediction with the superclass of its target, over all the images",
                    "在全部图像上，比较每个预测所属的超类与其真实标签所属的超类")
    a = float(superclass_accuracy(ev.preds, ev.targets))
    return (f"{a:.1%} on the test set (fine classes: {ev.accuracy:.1%}), and 100% where every image is taken "
            "for another class of its own superclass",
            f"测试集上 {a:.1%}（细类：{ev.accuracy:.1%}）；每张图像都被判成同一超类中另一个类别时为 100%")


@register("06.2", "tta_accuracy", """
    tta_accuracy = ((logits[:, 0] + logits[:, 1]).argmax(1) == test_y).float().mean().item()
    one_view = (logits[:, 0].argmax(1) == test_y).float().mean().item()
    changed = ((logits[:, 0] + logits[:, 1]).argmax(1) != logits[:, 0].argmax(1)).sum().item()
    print(f"with flip averaging {tta_accuracy:.1%}, original view alone {one_view:.1%}: "
          f"{changed} of {len(test_y)} predictions changed")
    print(f"翻转平均后 {tta_accuracy:.1%}，仅用原图 {one_view:.1%}：{len(test_y)} 个预测中有 {changed} 个改变了")
    print("measured on test, as a report. To *decide* to use it, compare on the validation split, as for any choice")
    print("这是在测试集上测的，只作报告。要*决定*是否采用它，和任何选择一样，应在验证集上比较")
    """, [("tta_accuracy = (logits[:, 0].argmax(1) == test_y).float().mean().item()", "original view alone"),
          ("tta_accuracy = ((logits[:, 0] + logits[:, 1]).argmax(1) == test_y)[:len(test_y) // 2].float().mean().item()",
           "every test image")])
def _tta(ns, tta_accuracy):
    logits, y = ns["logits"], ns["test_y"]
    a = float(tta_accuracy)
    both = logits[:, 0] + logits[:, 1]
    probs = logits[:, 0].softmax(1) + logits[:, 1].softmax(1)
    if any(math.isclose(a, (s.argmax(1) == y).float().mean().item(), abs_tol=1e-6) for s in (both, probs)):
        one = (logits[:, 0].argmax(1) == y).float().mean().item()
        return f"with flip averaging {a:.1%}, original view alone {one:.1%}", f"翻转平均后 {a:.1%}，仅用原图 {one:.1%}"
    if math.isclose(a, (logits[:, 0].argmax(1) == y).float().mean().item(), abs_tol=1e-6):
        raise Wrong("that is the original view alone; add the two views' scores before the argmax",
                    "这只是原图单独的结果；要在 argmax 之前把两个视图的得分相加")
    if math.isclose(a, (logits[:, 1].argmax(1) == y).float().mean().item(), abs_tol=1e-6):
        raise Wrong("that is the mirrored view alone; add the two views' scores before the argmax",
                    "这只是镜像图单独的结果；要在 argmax 之前把两个视图的得分相加")
    raise Wrong(f"not the accuracy of the averaged scores over every test image ({len(y)} of them)",
                f"这不是平均后的得分在全部测试集图像（共 {len(y)} 张）上的准确率")


@register("06.3", "per_superclass_accuracy", """
    import matplotlib.pyplot as plt

    def per_superclass_accuracy(preds, targets):
        coarse_of = torch.tensor(test_ds.fine_to_coarse)[targets]  # each image's true superclass
        hit = (preds == targets).float()
        return torch.stack([hit[coarse_of == s].mean() for s in range(len(test_ds.coarse_classes))])

    per_superclass = per_superclass_accuracy(ev.preds, ev.targets)
    counts = torch.bincount(torch.tensor(test_ds.fine_to_coarse)[ev.targets], minlength=len(test_ds.coarse_classes))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    error = (per_superclass * (1 - per_superclass) / counts).sqrt()  # one standard error
    ax.barh(test_ds.coarse_classes, per_superclass.tolist(), xerr=error.tolist(), color="tab:blue")
    ax.set(xlabel="fine-class accuracy on the superclass's test images (bar: one standard error)", xlim=(0, 1))
    fig.tight_layout()
    plt.show()
    order = per_superclass.argsort()
    print("hardest · 最难:", [test_ds.coarse_classes[i] for i in order[:3].tolist()],
          "| easiest · 最容易:", [test_ds.coarse_classes[i] for i in order[-3:].tolist()])
    print(f"about {counts.float().mean():.0f} test images per superclass: differences smaller than the bars are noise")
    print(f"每个超类约有 {counts.float().mean():.0f} 张测试集图像：比误差条还小的差异只是噪声")
    """, [("def per_superclass_accuracy(preds, targets):\n"
           "    return torch.stack([(preds == targets)[targets == k].float().mean() for k in range(100)])",
           "20 superclasses"),
          ("def per_superclass_accuracy(preds, targets):\n    to_coarse = torch.tensor(test_ds.fine_to_coarse)\n"
           "    coarse_of = to_coarse[targets]\n"
           "    return torch.stack([(to_coarse[preds] == coarse_of)[coarse_of == s].float().mean() for s in range(20)])",
           "fine-class accuracy"),
          ("def per_superclass_accuracy(preds, targets):\n    coarse_of = torch.tensor(test_ds.fine_to_coarse)[preds]\n"
           "    return torch.stack([(preds == targets)[coarse_of == s].float().mean() for s in range(20)])",
           "true class")])
def _per_superclass(ns, per_superclass_accuracy):
    ev, c, ds = ns["ev"], _to_coarse(ns), ns["test_ds"]
    # The test set, then a case where superclass and fine-class accuracy part (on smoke they can agree)
    for preds, targets in ((ev.preds, ev.targets), (_siblings(c)[ev.targets], ev.targets)):
        _judge_per_superclass(torch.as_tensor(per_superclass_accuracy(preds, targets)).float().flatten(),
                              preds, targets, c, len(ds.coarse_classes))
    a = torch.as_tensor(per_superclass_accuracy(ev.preds, ev.targets)).float().flatten()
    hardest = ds.coarse_classes[int(a.nan_to_num(2).argmin())]
    easiest = ds.coarse_classes[int(a.nan_to_num(-1).argmax())]
    return f"hardest: {hardest!r}; easiest: {easiest!r}", f"最难：{hardest!r}；最容易：{easiest!r}"


def _judge_per_superclass(a, preds, targets, c, n):
    if a.numel() != n:
        raise Wrong(f"{a.numel()} numbers: one per superclass, {n} superclasses",
                    f"这里有 {a.numel()} 个数：应每个超类一个，共 {n} 个超类")
    hit = (preds == targets).float()

    def by(groups, right):
        return torch.stack([right[groups == s].mean() for s in range(n)])

    def same(x):
        return torch.allclose(a, x, atol=1e-6, equal_nan=True)

    if same(by(c[targets], hit)):
        return
    if same(by(c[targets], (c[preds] == c[targets]).float())):
        raise Wrong("that counts a prediction right when it is in the right superclass; "
                    "this asks for the fine-class accuracy, grouped by superclass",
                    "这样只要预测落在正确的超类里就算对；这里要的是细类准确率，按超类分组")
    if same(by(c[preds], hit)):
        raise Wrong("grouped by the predicted class's superclass; group by the true class's (targets)",
                    "这是按预测类别所属的超类分组；应按真实类别所属的超类分组（targets）")
    raise Wrong("for each superclass s: the mean of (preds == targets) over the images whose true class is in s",
                "对每个超类 s：在真实类别属于 s 的图像上，求 (preds == targets) 的均值")
