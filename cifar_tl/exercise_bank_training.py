"""The exercises of notebooks 05-06 (training, testing): checks that train again, solutions, wrong answers."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from .exercises import Wrong, register

# The code of the answer cells that give the student a tool (05.1, 08.2): the notebook holds the
# same text (tests/test_exercises.py compares), and the checks train with the same recipe.
TRAIN_HEAD_CELL = """from cifar_tl import widgets


def train_head(lr, epochs=5):
    \"\"\"A fresh head (the same seed each time) trained on the cached training features (the store
    extracts the views it samples); returns its history, one row per epoch, judged on validation.\"\"\"
    _, history = widgets.train_head(store, (val_f, val_y), hidden=cfg.hidden[0], depth=len(cfg.hidden),
                                    lr=lr, epochs=epochs, batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                                    num_classes=len(train_ds.classes), standardize=cfg.standardizes())
    return history
"""

ACCURACY_OF_CELL = """from cifar_tl import widgets


def accuracy_of(design):
    \"\"\"The validation accuracy of a fresh head of this design, (hidden, depth, lr, epochs).\"\"\"
    hidden, depth, lr, n_epochs = design
    _, history = widgets.train_head(store, (val_f, val_y), hidden=hidden, depth=depth, lr=lr,
                                    epochs=n_epochs, batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                                    num_classes=len(train_ds.classes), standardize=cfg.standardizes())
    return history[-1]["val_accuracy"]
"""

_RUNS: dict[tuple, tuple] = {}  # trained heads, by (features, design): a check trains each design once


def head_run(ns: dict, hidden: int, depth: int, lr: float, epochs: int) -> tuple[list[dict], float | None]:
    """(history, test accuracy or None) of a fresh head trained on the notebook's cached training
    features (its ``store`` where it has one) and judged on its validation features, the recipe of
    ``widgets.train_head``."""
    from . import engine, features, widgets

    cfg = ns["cfg"]
    test = (ns["test_f"], ns["test_y"]) if "test_f" in ns and "test_y" in ns else None
    train = ns["store"] if "store" in ns else (ns["train_f"], ns["train_y"])
    key = (id(train if "store" in ns else ns["train_f"]), id(ns["val_f"]), id(test and test[0]), int(hidden), int(depth), float(lr), int(epochs))
    if key not in _RUNS:
        head, history = widgets.train_head(
            train, (ns["val_f"], ns["val_y"]), hidden=int(hidden), depth=int(depth),
            lr=float(lr), epochs=int(epochs), batch_size=cfg.batch_size, seed=cfg.seed, device=ns.get("device", "cpu"),
            num_classes=len(ns["train_ds"].classes), standardize=cfg.standardizes())
        tested = None if test is None else engine.evaluate(
            head, features.FeatureLoader(*test, 512, train=False, device=ns.get("device", "cpu")),
            ns.get("device", "cpu"), progress=False).accuracy
        _RUNS[key] = (history, tested)
    return _RUNS[key]


def judge_table(table, recompute, what: str, what_zh: str = "") -> dict:
    """``table`` {choice: validation accuracy} checked against ``recompute(choice)`` -> (history,
    test accuracy): raises Wrong naming the mistake (test accuracies, an earlier epoch, invented).
    ``what`` names a choice in the English diagnoses, ``what_zh`` in the Chinese (``what`` if not given)."""
    what_zh = what_zh or what
    if not isinstance(table, dict) or not table:
        raise Wrong(f"a dict {{{what}: validation accuracy}}, not a {type(table).__name__}",
                    f"应是一个字典 {{{what_zh}: 验证集准确率}}，而不是 {type(table).__name__}")
    truths = {}
    for choice, value in table.items():
        if isinstance(value, (list, tuple, dict)):
            raise Wrong(f"{what} {choice}: one number, the last epoch's val_accuracy, not a whole history",
                        f"{what_zh} {choice}：应是一个数，即最后一个 epoch 的 val_accuracy，而不是整段训练历史")
        value = float(value)
        history, tested = recompute(choice)
        truth = history[-1]["val_accuracy"]
        truths[choice] = truth
        if math.isclose(value, truth, abs_tol=1e-6):
            continue
        if tested is not None and math.isclose(value, tested, abs_tol=1e-6):
            raise Wrong(f"these are test accuracies ({what} {choice}: {value:.1%} on test): a choice is made on the "
                        "validation split (val_accuracy), and the test split is kept for the one final report",
                        f"这些是测试集准确率（{what_zh} {choice}：测试集上 {value:.1%}）：选择要在验证集上做"
                        "（val_accuracy），测试集留到最后，只用于一次最终报告")
        if value > 1:
            raise Wrong(f"{value:g} is a percentage: accuracies here are fractions, 0..1",
                        f"{value:g} 是百分数：这里的准确率是比例，取值 0..1")
        if any(math.isclose(value, row["val_accuracy"], abs_tol=1e-6) for row in history):
            raise Wrong(f"{what} {choice}: {value:.1%} is an earlier epoch's; take the last epoch's val_accuracy",
                        f"{what_zh} {choice}：{value:.1%} 是较早某个 epoch 的结果；应取最后一个 epoch 的 val_accuracy")
        raise Wrong(f"these accuracies were not trained here: {what} {choice} gives {truth:.1%} on validation "
                    "when trained again with the same recipe and seed",
                    f"这些准确率不是在这里训练得到的：用同样的训练方法和随机种子重新训练，"
                    f"{what_zh} {choice} 在验证集上得到 {truth:.1%}")
    return truths


def judge_best(table: dict, best, what: str, what_zh: str = "") -> None:
    """Raises Wrong unless ``best`` is the choice of ``table`` with the highest validation accuracy
    (``what`` names a choice in English, ``what_zh`` in Chinese, ``what`` if not given)."""
    what_zh = what_zh or what
    if best not in table:
        raise Wrong(f"the chosen {what}, {best}, is not one of those in your table",
                    f"你选的{what_zh} {best} 不在你的表中")
    top = max(table.values())
    if table[best] < top:
        raise Wrong(f"{best} is not the best in your table: {max(table, key=table.get)} scored higher on validation",
                    f"{best} 不是你表中最好的：{max(table, key=table.get)} 在验证集上得分更高")


# ---- 05 training -----------------------------------------------------------------------------
RATES = (1e-2, 1e-3, 1e-4)


@register("05.1", "accuracy_by_lr best_lr", """
    import matplotlib.pyplot as plt
    histories = {lr: train_head(lr) for lr in (1e-2, 1e-3, 1e-4)}
    accuracy_by_lr = {lr: history[-1]["val_accuracy"] for lr, history in histories.items()}
    best_lr = max(accuracy_by_lr, key=accuracy_by_lr.get)
    for lr, history in histories.items():
        print(f"lr {lr:g}: validation accuracy by epoch · 各 epoch 的验证集准确率", " ".join(f"{row['val_accuracy']:.0%}" for row in history))
    print(f"best on the validation split: lr {best_lr:g}. Chosen on validation, not test: a rate picked for its "
          "test score would make the final test accuracy a chosen, optimistic figure")
    print(f"验证集上最好的是 lr {best_lr:g}。要在验证集而不是测试集上选：按测试集得分挑出的学习率，"
          "会让最终的测试集准确率成为一个挑选过的、偏乐观的数字")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for lr, history in histories.items():
        ax.plot([row["epoch"] for row in history], [row["val_accuracy"] for row in history], marker="o", label=f"lr {lr:g}")
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="a fresh head per learning rate")
    ax.legend()
    plt.show()
    """, [("accuracy_by_lr = {1e-2: 0.3071, 1e-3: 0.4523, 1e-4: 0.2019}\nbest_lr = 1e-3", "not trained here"),
          ("from cifar_tl.exercise_bank_training import head_run\n"
           "accuracy_by_lr = {lr: head_run(globals(), cfg.hidden[0], len(cfg.hidden), lr, 5)[1] for lr in (1e-2, 1e-3, 1e-4)}\n"
           "best_lr = max(accuracy_by_lr, key=accuracy_by_lr.get)", "test accuracies", "test_f test_y"),
          ("accuracy_by_lr = {lr: train_head(lr)[-1]['val_accuracy'] for lr in (1e-2, 1e-3, 1e-4)}\n"
           "best_lr = min(accuracy_by_lr, key=accuracy_by_lr.get)", "not the best"),
          ("accuracy_by_lr = {lr: train_head(lr)[0]['val_accuracy'] for lr in (1e-2, 1e-3, 1e-4)}\n"
           "best_lr = max(accuracy_by_lr, key=accuracy_by_lr.get)", "earlier epoch")])
def _lr(ns, accuracy_by_lr, best_lr):
    cfg = ns["cfg"]
    if not isinstance(accuracy_by_lr, dict) or sorted(map(float, accuracy_by_lr)) != sorted(RATES):
        raise Wrong("the keys are the three rates, 1e-2, 1e-3 and 1e-4",
                    "字典的键应是这三个学习率：1e-2、1e-3 和 1e-4")
    judge_table(accuracy_by_lr, lambda lr: head_run(ns, cfg.hidden[0], len(cfg.hidden), lr, 5), "lr", "lr")
    judge_best(accuracy_by_lr, best_lr, "rate", "学习率")
    rows = sorted(accuracy_by_lr.items())
    return (", ".join(f"lr {k:g}: {v:.1%}" for k, v in rows) + f" on validation; best {best_lr:g}",
            "验证集上 " + "，".join(f"lr {k:g}：{v:.1%}" for k, v in rows) + f"；最好的是 {best_lr:g}")


def _scores(head, x):
    head = copy.deepcopy(head).cpu().eval()
    with torch.no_grad():
        return head(x.cpu())


@register("05.2", "my_path my_loaded", """
    import copy
    import torch
    from cifar_tl import checkpoint
    my_path = checkpoint.save_head(tmp / "solution" / "head.pt", model.head, config=cfg, class_names=train_ds.classes)
    my_loaded, meta = checkpoint.load_head(my_path)
    x = val_f[:8, 0].cpu()
    with torch.no_grad():
        gap = (copy.deepcopy(my_loaded).cpu().eval()(x) - copy.deepcopy(model.head).cpu().eval()(x)).abs().max()
    print(f"{my_path}: {my_path.stat().st_size / 1e6:.2f} MB; it also keeps {sorted(meta)[:6]} ...")
    print(f"文件 {my_path.stat().st_size / 1e6:.2f} MB；除了权重，还保存了 {sorted(meta)[:6]} 等信息")
    print(f"largest score difference, loaded vs trained head: {gap:.1e}: the file is the whole head")
    print(f"载入的分类头与训练好的分类头，得分最大相差 {gap:.1e}：文件里就是完整的分类头")
    """, [("from cifar_tl import checkpoint\nmy_path = checkpoint.save_head(tmp / 'w1' / 'head.pt', model.head, config=cfg, class_names=train_ds.classes)\n"
           "my_loaded = model.head", "model.head itself"),
          ("import copy, torch\nfrom cifar_tl import checkpoint\nfresh = copy.deepcopy(model.head)\n_ = [torch.nn.init.normal_(p) for p in fresh.parameters()]\n"
           "my_path = checkpoint.save_head(tmp / 'w2' / 'head.pt', fresh, config=cfg, class_names=train_ds.classes)\n"
           "my_loaded = checkpoint.load_head(my_path)[0]", "another head"),
          ("my_path = tmp / 'nowhere' / 'head.pt'\nmy_loaded = model.head", "no file"),
          ("from cifar_tl import checkpoint\nmy_path = checkpoint.save_head(tmp / 'w3' / 'head.pt', model.head, config=cfg, class_names=train_ds.classes)\n"
           "my_loaded = checkpoint.load_head(my_path)", "(head, metadata)")])
def _saved(ns, my_path, my_loaded):
    from . import checkpoint
    from .errors import CifarTLError

    path = Path(my_path)
    if not path.is_file():
        raise Wrong(f"no file at {path}: checkpoint.save_head writes one and returns its path",
                    f"{path} 处没有文件：checkpoint.save_head 会写出一个文件并返回它的路径")
    try:
        from_file, _ = checkpoint.load_head(path)
    except CifarTLError as e:
        raise Wrong(f"{path} is not a head checkpoint: {e}", f"{path} 不是分类头的检查点：{e}") from None
    trained = ns["model"].head
    x = ns["val_f"][:8, 0]
    if not torch.allclose(_scores(from_file, x), _scores(trained, x), atol=1e-5):
        raise Wrong(f"{path.name} holds another head: its scores differ from model.head's; save the trained model.head",
                    f"{path.name} 里存的是另一个分类头：它的得分与 model.head 的不同；要保存训练好的 model.head")
    if my_loaded is trained:
        raise Wrong("that is model.head itself, not a head loaded from the file",
                    "这就是 model.head 本身，而不是从文件载入的分类头")
    if isinstance(my_loaded, tuple):
        raise Wrong("load_head returns (head, metadata): keep the head",
                    "load_head 返回的是 (head, metadata)：只保留其中的分类头")
    shared = {p.data_ptr() for p in trained.parameters()} & {p.data_ptr() for p in my_loaded.parameters()}
    if shared:
        raise Wrong("it shares its weights with model.head: it was not loaded from the file",
                    "它与 model.head 共享权重：说明它不是从文件载入的")
    if not torch.allclose(_scores(my_loaded, x), _scores(trained, x), atol=1e-5):
        raise Wrong("my_loaded's scores differ from model.head's: keep the head that load_head(my_path) returns",
                    "my_loaded 的得分与 model.head 的不同：应保留 load_head(my_path) 返回的分类头")
    size = path.stat().st_size / 1e6
    return (f"{path.name} ({size:.2f} MB) loads back to a head with the same scores",
            f"{path.name}（{size:.2f} MB）载入后得到的分类头，得分与原来的完全相同")


# ---- 06 testing ------------------------------------------------------------------------------
def _to_coarse(ns):
    return torch.tensor(ns["test_ds"].fine_to_coarse)


@register("06.1", "my_superclass_accuracy", """
    to_coarse = torch.tensor(test_ds.fine_to_coarse)  # fine class -> its superclass
    my_superclass_accuracy = (to_coarse[ev.preds] == to_coarse[ev.targets]).float().mean().item()
    print(f"superclass accuracy {my_superclass_accuracy:.1%}, fine-class accuracy {ev.accuracy:.1%}: "
          f"{my_superclass_accuracy - ev.accuracy:.1%} of the test images get a wrong class of the right superclass")
    print(f"超类准确率 {my_superclass_accuracy:.1%}，细类准确率 {ev.accuracy:.1%}："
          f"{my_superclass_accuracy - ev.accuracy:.1%} 的测试集图像被判成了正确超类中的错误细类")
    """, [("my_superclass_accuracy = ev.accuracy", "fine-class"),
          ("to_coarse = torch.tensor(test_ds.fine_to_coarse)\n"
           "my_superclass_accuracy = (to_coarse[ev.preds] == ev.targets).float().mean().item()", "targets too")])
def _superclass_accuracy(ns, my_superclass_accuracy):
    ev, c = ns["ev"], _to_coarse(ns)
    a = float(my_superclass_accuracy)
    truth = (c[ev.preds] == c[ev.targets]).float().mean().item()
    if math.isclose(a, truth, abs_tol=1e-6):
        return f"{a:.1%} (fine classes: {ev.accuracy:.1%})", f"{a:.1%}（细类：{ev.accuracy:.1%}）"
    if math.isclose(a, ev.accuracy, abs_tol=1e-6):
        raise Wrong("that is the fine-class accuracy; map predictions and targets to superclasses first",
                    "这是细类准确率；要先把预测和真实标签都映射到超类")
    if any(math.isclose(a, v, abs_tol=1e-6) for v in ((c[ev.preds] == ev.targets).float().mean().item(),
                                                      (ev.preds == c[ev.targets]).float().mean().item())):
        raise Wrong("only one side mapped to superclasses: map the targets too (and the predictions), then compare",
                    "只有一边映射到了超类：真实标签也要映射（预测同样要映射），然后再比较")
    if a > 1:
        raise Wrong("a fraction, 0..1, not a percentage", "应是比例，取值 0..1，而不是百分数")
    raise Wrong("compare the superclass of each prediction with the superclass of its target, over all test images",
                "在全部测试集图像上，比较每个预测所属的超类与其真实标签所属的超类")


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


@register("06.3", "per_superclass", """
    import matplotlib.pyplot as plt
    coarse_of = torch.tensor(test_ds.fine_to_coarse)[ev.targets]  # each test image's true superclass
    hit = (ev.preds == ev.targets).float()
    per_superclass = torch.stack([hit[coarse_of == s].mean() for s in range(len(test_ds.coarse_classes))])
    counts = torch.bincount(coarse_of, minlength=len(test_ds.coarse_classes))
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
    """, [("per_superclass = torch.stack([(ev.preds == ev.targets)[ev.targets == k].float().mean() for k in range(100)])",
           "20 superclasses"),
          ("to_coarse = torch.tensor(test_ds.fine_to_coarse)\ncoarse_of = to_coarse[ev.targets]\n"
           "per_superclass = torch.stack([(to_coarse[ev.preds] == coarse_of)[coarse_of == s].float().mean() for s in range(20)])",
           "fine-class accuracy"),
          ("coarse_of = torch.tensor(test_ds.fine_to_coarse)[ev.preds]\n"
           "per_superclass = torch.stack([(ev.preds == ev.targets)[coarse_of == s].float().mean() for s in range(20)])",
           "true class")])
def _per_superclass(ns, per_superclass):
    ev, c, ds = ns["ev"], _to_coarse(ns), ns["test_ds"]
    n = len(ds.coarse_classes)
    a = torch.as_tensor(per_superclass).float().flatten()
    if a.numel() != n:
        raise Wrong(f"{a.numel()} numbers: one per superclass, {n} superclasses",
                    f"这里有 {a.numel()} 个数：应每个超类一个，共 {n} 个超类")
    hit = (ev.preds == ev.targets).float()

    def by(groups, right):
        return torch.stack([right[groups == s].mean() for s in range(n)])

    def same(x):
        return torch.allclose(a, x, atol=1e-6, equal_nan=True)

    if same(by(c[ev.targets], hit)):
        order = a.nan_to_num(2).argsort()
        hardest = ds.coarse_classes[int(order[0])]
        easiest = ds.coarse_classes[int(a.nan_to_num(-1).argmax())]
        return f"hardest: {hardest!r}; easiest: {easiest!r}", f"最难：{hardest!r}；最容易：{easiest!r}"
    if same(by(c[ev.targets], (c[ev.preds] == c[ev.targets]).float())):
        raise Wrong("that counts a prediction right when it is in the right superclass; "
                    "this asks for the fine-class accuracy, grouped by superclass",
                    "这样只要预测落在正确的超类里就算对；这里要的是细类准确率，按超类分组")
    if same(by(c[ev.preds], hit)):
        raise Wrong("grouped by the predicted class's superclass; group by the true class's (ev.targets)",
                    "这是按预测类别所属的超类分组；应按真实类别所属的超类分组（ev.targets）")
    raise Wrong("for each superclass s: the mean of (preds == targets) over the test images whose true class is in s",
                "对每个超类 s：在真实类别属于 s 的测试集图像上，求 (preds == targets) 的均值")
