"""The exercises of notebook 05 (training): checks that train again, solutions, wrong answers."""

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
