"""Every exercise: its solution is right, its known wrong answers are wrong with their own diagnosis
(exercises.verify), a blank is "not answered yet", and solution() leaves the student's variables alone.
The notebooks' states are rebuilt cheaply: synthetic data, resnet18 at 32 px, small made-up features."""

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from cifar_tl import Config, data, exercises, finetune, models, synthetic  # noqa: E402
from cifar_tl.exercise_bank_training import ACCURACY_OF_CELL, TRAIN_HEAD_CELL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """One namespace holding every variable the exercises of 00-09 read."""
    tmp = tmp_path_factory.mktemp("exercises")
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32, train_size=200, test_size=100,
                             epochs=3, data_root=str(tmp / "data"), progress=False)
    train_ds, val_ds, test_ds = data.build_datasets(cfg)
    torch.manual_seed(0)
    model = models.TransferModel.from_config(cfg, num_classes=len(train_ds.classes))

    def feats(n, classes=10):  # features that carry the class: heads learn, learning rates differ
        y = torch.randint(0, classes, (n,))
        centre = torch.randn(classes, 16)
        return (centre[y][:, None] + 0.8 * torch.randn(n, 2, 16)), y

    g = torch.manual_seed(1)
    train_f, train_y = feats(300)
    val_f, val_y = feats(80)
    test_f, test_y = feats(80)
    del g
    head = models.MLPHead(16, len(train_ds.classes))
    t = torch.rand(3, 8, 8)
    mean, std = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(data.IMAGENET_STD).view(3, 1, 1)
    coarse = [i % 20 for i in range(60)]
    z = torch.randn(60, 8) + 1.5 * torch.randn(20, 8)[coarse]  # features that carry the superclass, as real ones do
    labels_fine = torch.tensor([i % 100 for i in range(60)])

    def nearest_neighbour_accuracy(vectors, labels):
        d = torch.cdist(vectors, vectors)
        d.fill_diagonal_(float("inf"))
        return (labels[d.argmin(1)] == labels).float().mean().item()

    preds, targets = torch.randint(0, 100, (100,)), torch.tensor(test_ds.targets[:100])
    logits = 2 * torch.randn(100, 2, 100) + 3 * torch.nn.functional.one_hot(targets, 100)[:, None]
    example = tmp / "example.png"
    from PIL import Image

    Image.fromarray(synthetic.make_images(1, seed=3)[0][0]).save(example)
    folder = tmp / "my_photos"
    images, labels = synthetic.make_images(6, seed=123)
    for k in (0, 40, 80):
        (folder / f"c{k}").mkdir(parents=True)
        for j, img in enumerate(images[labels == k]):
            Image.fromarray(img).save(folder / f"c{k}" / f"img{j}.png")
    ns = dict(
        fast_rate=120.0, tutorial_rate=30.0, Config=Config, train_ds=train_ds, val_ds=val_ds, test_ds=test_ds,
        tensor=t, normalised=(t - mean) / std, mean=mean, std=std, data=data, torch=torch,
        maps={3: torch.randn(1, 8, 2, 2)}, last=3, z=z, coarse=coarse, labels=labels_fine,
        nearest_neighbour_accuracy=nearest_neighbour_accuracy,
        nn_features=nearest_neighbour_accuracy(z, labels_fine), model=model, models=models, cfg=cfg, device="cpu",
        train_f=train_f, train_y=train_y, val_f=val_f, val_y=val_y, test_f=test_f, test_y=test_y, tmp=tmp,
        ev=SimpleNamespace(preds=preds, targets=targets, accuracy=(preds == targets).float().mean().item()),
        logits=logits, example=example, image_path=None, folder=folder, folder_classes=3, images=images,
        labels_img=labels, folder_cfg=cfg.replace(source=f"folder:{folder}", train_size=None, test_size=None),
        epochs=3, base=models.TransferModel.from_config(cfg, num_classes=100), copy=copy, finetune=finetune,
        store=(train_f, train_y),  # a FeatureStore in 05 and 08; widgets.train_head takes either
    )
    ns["labels"] = labels  # 07's photo labels (03's fine labels are only needed for nn_features)
    ns["transfer_model"] = model
    ns["model"] = SimpleNamespace(head=head, backbone=model.backbone)  # 05's trained head, 04's backbone
    exec(TRAIN_HEAD_CELL, ns)
    exec(ACCURACY_OF_CELL, ns)
    return ns


KEYS = ["00.1", "00.2", "01.1", "01.2", "02.1", "02.2", "03.1", "03.2", "04.1", "04.2", "05.1", "05.2",
        "06.1", "06.2", "06.3", "07.1", "07.2", "08.1", "08.2", "09.1", "09.2"]


def _ns_for(key, state):
    ns = dict(state)
    if key.startswith("03"):
        ns["labels"] = torch.tensor([i % 100 for i in range(60)])
    if key.startswith("04"):
        ns["model"] = models.TransferModel(state["model"].backbone, models.MLPHead(512, 100))
    if key.startswith("06"):
        ns["test_y"] = state["ev"].targets
    if key.startswith("07"):
        ns["model"] = state["transfer_model"]
    return ns


@pytest.mark.parametrize("key", KEYS)
def test_solution_is_right_and_each_known_wrong_answer_is_wrong_with_its_diagnosis(key, state, one_thread):
    ex = exercises.exercise(key)
    assert ex.wrongs, f"{key} has no known wrong answer"
    exercises.verify(key, _ns_for(key, state))


@pytest.mark.parametrize("key", KEYS)
def test_blank_answer_is_not_answered_and_check_shows_no_value(key, state, capsys):
    ex = exercises.exercise(key)
    assert exercises.check(key, *[...] * len(ex.names), ns=state) is None
    assert capsys.readouterr().out.strip() == exercises.NOT_ANSWERED


def test_diagnoses_differ_from_one_mistake_to_the_next(state):
    said = set()
    for key in KEYS:
        for code, *_ in exercises.exercise(key).wrongs:
            ns = exercises.run_code(code, _ns_for(key, state))
            said.add(str(exercises.verdict(key, *(ns[n] for n in exercises.exercise(key).names), ns=ns)))
    total = sum(len(exercises.exercise(key).wrongs) for key in KEYS)
    assert len(said) == total, "each typical mistake gets its own diagnosis"


def test_solution_prints_the_lesson_and_leaves_the_students_variables(state, capsys):
    ns = _ns_for("09.2", state)
    ns["my_model"], ns["top1_params"] = ..., ...
    flags = [p.requires_grad for p in ns["base"].parameters()]
    exercises.solution("09.2", ns)
    out = capsys.readouterr().out
    assert "finetune.unfreeze(my_model.backbone, 1)" in out and "top stage alone" in out
    assert not re.search(r"^right", out, re.M), "a solution shows the lesson, it does not say 'right'"
    assert ns["my_model"] is ... and ns["top1_params"] is ...
    assert [p.requires_grad for p in ns["base"].parameters()] == flags


def test_student_functions_left_blank_are_not_answered(state, capsys):
    def tutorial_passes(N, E):
        return ...

    exercises.check("08.1", tutorial_passes, tutorial_passes, ns=state)
    assert capsys.readouterr().out.strip() == exercises.NOT_ANSWERED


def test_verify_mode_fails_a_broken_check(state, monkeypatch):
    ex = exercises.exercise("00.1")
    monkeypatch.setattr(ex, "solution", "my_speedup = tutorial_rate / fast_rate")
    with pytest.raises(AssertionError, match="not right"):
        exercises.verify("00.1", state)
    monkeypatch.setenv(exercises.VERIFY_ENV, "verify")
    with pytest.raises(AssertionError):
        exercises.check("00.1", ..., ns=state)


def test_notebooks_answer_cells_are_the_checks_recipes():
    import json

    def source(name):
        return "\n".join("".join(c["source"]) for c in json.loads((ROOT / "notebooks" / name).read_text())["cells"])

    assert TRAIN_HEAD_CELL.strip().split("\n\n\n")[1] in source("05_training.ipynb")
    assert ACCURACY_OF_CELL.strip().split("\n\n\n")[1] in source("08_faster_cached_features.ipynb")


def test_a_value_that_matches_two_mistakes_names_both():
    # 900 training images (the smoke profile): 28 whole batches of 32, and 28 more would fill a 29th
    exercises.verify("02.1", {"train_ds": list(range(900))})


def test_check_and_solution_read_the_calling_cells_variables(state, capsys):
    ns = {"fast_rate": 90.0, "tutorial_rate": 30.0, "my_speedup": 3.0}
    exec('from cifar_tl import exercises\nexercises.check("00.1", my_speedup)', ns)  # as a notebook cell runs
    assert capsys.readouterr().out.startswith("right · 正确: the batched path is 3.0x faster")
    ns["my_speedup"] = ...
    exec('exercises.solution("00.1")', ns)
    out = capsys.readouterr().out
    assert "my_speedup = fast_rate / tutorial_rate" in out and "3.0" in out
    assert ns["my_speedup"] is ..., "the solution ran on a copy"


def test_a_mistake_that_gives_the_right_values_on_this_data_is_not_required_to_be_wrong():
    """On the smoke data some mistakes coincide with the truth (a 1x1 feature map pools to itself;
    every error crosses superclasses): verify skips those, and only those."""
    import torch

    from cifar_tl.exercises import _same

    assert _same((torch.ones(1, 4),), (torch.ones(1, 4),)) and _same((0.41,), (0.41 + 1e-12,))
    assert not _same((torch.ones(1, 4),), (torch.ones(4),))  # another shape is another answer
    assert not _same((torch.ones(1, 4),), (torch.zeros(1, 4),)) and not _same((0.41,), (0.42,))
    assert not _same((object(),), (object(),))


def test_every_verdict_is_said_in_english_then_in_chinese(capsys):
    ns = {"fast_rate": 90.0, "tutorial_rate": 30.0}
    for answer, english in ((3.0, "right · 正确: the batched path is 3.0x faster"),
                            (1 / 3, "wrong · 错误: 0.333 is the tutorial's rate over the batched one"),
                            ("fast", "wrong · 错误: a speed-up is one number")):
        exercises.check("00.1", answer, ns=ns)
        first, second = capsys.readouterr().out.rstrip("\n").split("\n")
        assert first.startswith(english) and not exercises.has_chinese(first.split(":", 1)[1])
        assert second.startswith("    ") and exercises.has_chinese(second), second


def test_verify_refuses_a_diagnosis_without_its_chinese(monkeypatch):
    ns = {"fast_rate": 90.0, "tutorial_rate": 30.0}
    exercises.verify("00.1", ns)
    original = exercises.Wrong.__init__
    monkeypatch.setattr(exercises.Wrong, "__init__", lambda self, message, zh="": original(self, message))
    with pytest.raises(AssertionError, match="has no Chinese"):
        exercises.verify("00.1", ns)


def test_a_hint_and_an_answer_that_raises_are_said_in_chinese_too():
    said = exercises.verdict("01.2", torch.zeros(2), ns={"normalised": "not a tensor", "mean": 0, "std": 1})
    assert said.status == "wrong" and "use normalised, mean and std" in said.message
    assert exercises.has_chinese(said.zh) and "Error" in said.zh
    for key in ("00.1", "01.2", "05.1", "08.2", "09.1"):
        english, chinese = exercises.exercise(key).hint
        assert not english or exercises.has_chinese(chinese), key


def _mistakes_only_across_superclasses(ns):
    """``ns`` with test predictions wrong for a third of the images, each into another superclass:
    as on smoke, no class is taken for another of its own superclass."""
    c = torch.tensor(ns["test_ds"].fine_to_coarse)
    targets = ns["ev"].targets
    other_superclass = torch.tensor([int((c != c[t]).nonzero()[0]) for t in targets.tolist()])
    preds = torch.where(torch.arange(len(targets)) % 3 == 0, other_superclass, targets)
    ns["ev"] = SimpleNamespace(preds=preds, targets=targets, accuracy=(preds == targets).float().mean().item())
    return ns


def test_superclass_accuracy_is_told_from_fine_accuracy_even_where_the_data_cannot(state):
    """On smoke the model may never take a class for another of its superclass: then both
    accuracies are one number, and only a case the check makes up tells them apart."""
    ns = _mistakes_only_across_superclasses(_ns_for("06.1", state))
    c, ev = torch.tensor(ns["test_ds"].fine_to_coarse), ns["ev"]
    assert (c[ev.preds] == c[ev.targets]).float().mean().item() == ev.accuracy  # the data cannot tell
    fine = exercises.run_code("def superclass_accuracy(preds, targets):\n    return (preds == targets).float().mean().item()", ns)
    said = exercises.verdict("06.1", fine["superclass_accuracy"], ns=ns)
    assert said.status == "wrong" and "fine-class" in said.message
    right = exercises.run_code(exercises.exercise("06.1").solution, ns)
    assert exercises.verdict("06.1", right["superclass_accuracy"], ns=ns).status == "right"


def test_pooling_is_told_from_keeping_every_position_even_on_a_1x1_map(state):
    """On smoke the last stage's map is 1 x 1: flattening it gives the pooled numbers, and only the
    made-up map the check adds tells the two apart."""
    ns = _ns_for("03.1", state)
    ns["maps"] = {3: torch.randn(1, 8, 1, 1)}
    flat = exercises.run_code("def pool(fmap):\n    return fmap.flatten(1)", ns)
    said = exercises.verdict("03.1", flat["pool"], ns=ns)
    assert said.status == "wrong" and "every position" in said.message and "3 x 5" in said.message
    right = exercises.run_code(exercises.exercise("03.1").solution, ns)
    assert exercises.verdict("03.1", right["pool"], ns=ns).status == "right"


def test_per_superclass_accuracy_is_told_from_superclass_hits_even_where_the_data_cannot(state):
    """06.3 on smoke: with no mistake inside a superclass, grouping superclass hits gives the same bars."""
    ns = _mistakes_only_across_superclasses(_ns_for("06.3", state))
    wrong = exercises.run_code(exercises.exercise("06.3").wrongs[1][0], ns)
    said = exercises.verdict("06.3", wrong["per_superclass_accuracy"], ns=ns)
    assert said.status == "wrong" and "fine-class accuracy" in said.message


def test_verify_fails_when_a_known_wrong_answer_gives_the_solutions_values(state, monkeypatch):
    """A mistake the data cannot tell from the solution would be called right in the notebook."""
    ex = exercises.exercise("00.1")
    monkeypatch.setattr(ex, "wrongs", [("my_speedup = fast_rate / tutorial_rate + 0.0", "divide", "")])
    with pytest.raises(AssertionError, match="gives the solution's values"):
        exercises.verify("00.1", state)
