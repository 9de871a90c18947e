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


def judge_table(table, recompute, what: str) -> dict:
    """``table`` {choice: validation accuracy} checked against ``recompute(choice)`` -> (history,
    test accuracy): raises Wrong naming the mistake (test accuracies, an earlier epoch, invented)."""
    if not isinstance(table, dict) or not table:
        raise Wrong(f"a dict {{{what}: validation accuracy}}, not a {type(table).__name__}")
    truths = {}
    for choice, value in table.items():
        if isinstance(value, (list, tuple, dict)):
            raise Wrong(f"{what} {choice}: one number, the last epoch's val_accuracy, not a whole history")
        value = float(value)
        history, tested = recompute(choice)
        truth = history[-1]["val_accuracy"]
        truths[choice] = truth
        if math.isclose(value, truth, abs_tol=1e-6):
            continue
        if tested is not None and math.isclose(value, tested, abs_tol=1e-6):
            raise Wrong(f"these are test accuracies ({what} {choice}: {value:.1%} on test): a choice is made on the "
                        "validation split (val_accuracy), and the test split is kept for the one final report")
        if value > 1:
            raise Wrong(f"{value:g} is a percentage: accuracies here are fractions, 0..1")
        if any(math.isclose(value, row["val_accuracy"], abs_tol=1e-6) for row in history):
            raise Wrong(f"{what} {choice}: {value:.1%} is an earlier epoch's; take the last epoch's val_accuracy")
        raise Wrong(f"these accuracies were not trained here: {what} {choice} gives {truth:.1%} on validation "
                    "when trained again with the same recipe and seed")
    return truths


def judge_best(table: dict, best, what: str) -> None:
    if best not in table:
        raise Wrong(f"the chosen {what}, {best}, is not one of those in your table")
    top = max(table.values())
    if table[best] < top:
        raise Wrong(f"{best} is not the best in your table: {max(table, key=table.get)} scored higher on validation")


# ---- 05 training -----------------------------------------------------------------------------
RATES = (1e-2, 1e-3, 1e-4)


@register("05.1", "accuracy_by_lr best_lr", """
    import matplotlib.pyplot as plt
    histories = {lr: train_head(lr) for lr in (1e-2, 1e-3, 1e-4)}
    accuracy_by_lr = {lr: history[-1]["val_accuracy"] for lr, history in histories.items()}
    best_lr = max(accuracy_by_lr, key=accuracy_by_lr.get)
    for lr, history in histories.items():
        print(f"lr {lr:g}: validation accuracy by epoch", " ".join(f"{row['val_accuracy']:.0%}" for row in history))
    print(f"best on the validation split: lr {best_lr:g}. Chosen on validation, not test: a rate picked for its "
          "test score would make the final test accuracy a chosen, optimistic figure")
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
        raise Wrong("the keys are the three rates, 1e-2, 1e-3 and 1e-4")
    judge_table(accuracy_by_lr, lambda lr: head_run(ns, cfg.hidden[0], len(cfg.hidden), lr, 5), "lr")
    judge_best(accuracy_by_lr, best_lr, "rate")
    return ", ".join(f"lr {k:g}: {v:.1%}" for k, v in sorted(accuracy_by_lr.items())) + f" on validation; best {best_lr:g}"


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
    print(f"largest score difference, loaded vs trained head: {gap:.1e}: the file is the whole head")
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
        raise Wrong(f"no file at {path}: checkpoint.save_head writes one and returns its path")
    try:
        from_file, _ = checkpoint.load_head(path)
    except CifarTLError as e:
        raise Wrong(f"{path} is not a head checkpoint: {e}") from None
    trained = ns["model"].head
    x = ns["val_f"][:8, 0]
    if not torch.allclose(_scores(from_file, x), _scores(trained, x), atol=1e-5):
        raise Wrong(f"{path.name} holds another head: its scores differ from model.head's; save the trained model.head")
    if my_loaded is trained:
        raise Wrong("that is model.head itself, not a head loaded from the file")
    if isinstance(my_loaded, tuple):
        raise Wrong("load_head returns (head, metadata): keep the head")
    shared = {p.data_ptr() for p in trained.parameters()} & {p.data_ptr() for p in my_loaded.parameters()}
    if shared:
        raise Wrong("it shares its weights with model.head: it was not loaded from the file")
    if not torch.allclose(_scores(my_loaded, x), _scores(trained, x), atol=1e-5):
        raise Wrong("my_loaded's scores differ from model.head's: keep the head that load_head(my_path) returns")
    return f"{path.name} ({path.stat().st_size / 1e6:.2f} MB) loads back to a head with the same scores"


# ---- 06 testing ------------------------------------------------------------------------------
def _to_coarse(ns):
    return torch.tensor(ns["test_ds"].fine_to_coarse)


@register("06.1", "my_superclass_accuracy", """
    to_coarse = torch.tensor(test_ds.fine_to_coarse)  # fine class -> its superclass
    my_superclass_accuracy = (to_coarse[ev.preds] == to_coarse[ev.targets]).float().mean().item()
    print(f"superclass accuracy {my_superclass_accuracy:.1%}, fine-class accuracy {ev.accuracy:.1%}: "
          f"{my_superclass_accuracy - ev.accuracy:.1%} of the test images get a wrong class of the right superclass")
    """, [("my_superclass_accuracy = ev.accuracy", "fine-class"),
          ("to_coarse = torch.tensor(test_ds.fine_to_coarse)\n"
           "my_superclass_accuracy = (to_coarse[ev.preds] == ev.targets).float().mean().item()", "targets too")])
def _superclass_accuracy(ns, my_superclass_accuracy):
    ev, c = ns["ev"], _to_coarse(ns)
    a = float(my_superclass_accuracy)
    truth = (c[ev.preds] == c[ev.targets]).float().mean().item()
    if math.isclose(a, truth, abs_tol=1e-6):
        return f"{a:.1%} (fine classes: {ev.accuracy:.1%})"
    if math.isclose(a, ev.accuracy, abs_tol=1e-6):
        raise Wrong("that is the fine-class accuracy; map predictions and targets to superclasses first")
    if any(math.isclose(a, v, abs_tol=1e-6) for v in ((c[ev.preds] == ev.targets).float().mean().item(),
                                                      (ev.preds == c[ev.targets]).float().mean().item())):
        raise Wrong("only one side mapped to superclasses: map the targets too (and the predictions), then compare")
    if a > 1:
        raise Wrong("a fraction, 0..1, not a percentage")
    raise Wrong("compare the superclass of each prediction with the superclass of its target, over all test images")


@register("06.2", "tta_accuracy", """
    tta_accuracy = ((logits[:, 0] + logits[:, 1]).argmax(1) == test_y).float().mean().item()
    one_view = (logits[:, 0].argmax(1) == test_y).float().mean().item()
    changed = ((logits[:, 0] + logits[:, 1]).argmax(1) != logits[:, 0].argmax(1)).sum().item()
    print(f"with flip averaging {tta_accuracy:.1%}, original view alone {one_view:.1%}: "
          f"{changed} of {len(test_y)} predictions changed")
    print("measured on test, as a report. To *decide* to use it, compare on the validation split, as for any choice")
    """, [("tta_accuracy = (logits[:, 0].argmax(1) == test_y).float().mean().item()", "original view alone"),
          ("tta_accuracy = ((logits[:, 0] + logits[:, 1]).argmax(1) == test_y)[:len(test_y) // 2].float().mean().item()",
           "every test image")])
def _tta(ns, tta_accuracy):
    logits, y = ns["logits"], ns["test_y"]
    a = float(tta_accuracy)
    both = logits[:, 0] + logits[:, 1]
    probs = logits[:, 0].softmax(1) + logits[:, 1].softmax(1)
    if any(math.isclose(a, (s.argmax(1) == y).float().mean().item(), abs_tol=1e-6) for s in (both, probs)):
        return f"with flip averaging {a:.1%}, original view alone {(logits[:, 0].argmax(1) == y).float().mean().item():.1%}"
    if math.isclose(a, (logits[:, 0].argmax(1) == y).float().mean().item(), abs_tol=1e-6):
        raise Wrong("that is the original view alone; add the two views' scores before the argmax")
    if math.isclose(a, (logits[:, 1].argmax(1) == y).float().mean().item(), abs_tol=1e-6):
        raise Wrong("that is the mirrored view alone; add the two views' scores before the argmax")
    raise Wrong(f"not the accuracy of the averaged scores over every test image ({len(y)} of them)")


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
    print("hardest:", [test_ds.coarse_classes[i] for i in order[:3].tolist()],
          "| easiest:", [test_ds.coarse_classes[i] for i in order[-3:].tolist()])
    print(f"about {counts.float().mean():.0f} test images per superclass: differences smaller than the bars are noise")
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
        raise Wrong(f"{a.numel()} numbers: one per superclass, {n} superclasses")
    hit = (ev.preds == ev.targets).float()

    def by(groups, right):
        return torch.stack([right[groups == s].mean() for s in range(n)])

    def same(x):
        return torch.allclose(a, x, atol=1e-6, equal_nan=True)

    if same(by(c[ev.targets], hit)):
        order = a.nan_to_num(2).argsort()
        return f"hardest: {ds.coarse_classes[int(order[0])]!r}; easiest: {ds.coarse_classes[int(a.nan_to_num(-1).argmax())]!r}"
    if same(by(c[ev.targets], (c[ev.preds] == c[ev.targets]).float())):
        raise Wrong("that counts a prediction right when it is in the right superclass; "
                    "this asks for the fine-class accuracy, grouped by superclass")
    if same(by(c[ev.preds], hit)):
        raise Wrong("grouped by the predicted class's superclass; group by the true class's (ev.targets)")
    raise Wrong("for each superclass s: the mean of (preds == targets) over the test images whose true class is in s")
