"""Crafted and damaged model files: model.pt checked as strictly as head.pt, in predict and
evaluate alike; tensors that claim more than they store; a moved weights file."""

import shutil

import pytest
import torch
import torchvision
from PIL import Image

from cifar_tl import checkpoint, features, finetune
from cifar_tl.errors import DataError
from cifar_tl.models import build_backbone

from .conftest import cli_in_process as _cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
        "--test-size", "100", "--quiet")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A fine-tuning run on backbone weights from a file (resnet18, random values) and a frozen
    one; an image to predict."""
    from cifar_tl import cli

    base = tmp_path_factory.mktemp("crafted")
    torch.manual_seed(1)
    weights = base / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    image = base / "x.png"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(image)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFAR_TL_DATA", str(base / "data"))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert cli.main(["run", *TINY, "--epochs", "2", "--unfreeze", "1", "--weights", str(weights),
                             "--out", str(base / "ft")]) == 0
            assert cli.main(["run", *TINY, "--epochs", "1", "--out", str(base / "frozen")]) == 0
        finally:
            torch.set_num_threads(n)
    return {"model": base / "ft" / "model.pt", "head": base / "frozen" / "head.pt", "weights": weights,
            "image": image, "data": base / "data"}


def _crafted(made, tmp_path, edit, reseal=True, name="model.pt"):
    """A copy of the run's model.pt (or head.pt) edited by ``edit(blob)``, its checksums recomputed
    as someone crafting it would."""
    blob = torch.load(made["model" if name == "model.pt" else "head"], weights_only=True)
    edit(blob)
    if reseal and isinstance(blob.get("head"), dict):
        blob["head"] = checkpoint.with_checksum(blob["head"])
    path = tmp_path / name
    torch.save(checkpoint.with_checksum(blob) if reseal else blob, path)
    return path


def _both(capsys, made, path, monkeypatch):
    """(exit code, stderr lines) of predict and of evaluate on ``path``."""
    monkeypatch.setenv("CIFAR_TL_DATA", str(made["data"]))
    return [_cli(capsys, "predict", "--checkpoint", path, made["image"])[::2],
            _cli(capsys, "evaluate", "--checkpoint", path, "--quiet")[::2]]


def _set(key, value, where="head"):
    def edit(blob):
        target = blob[where] if where else blob
        if key.startswith("config_"):
            target["config"][key[len("config_"):]] = value
        elif value is KeyError:
            del target[key]
        else:
            target[key] = value
    return edit


@pytest.mark.parametrize("edit, needle", [
    (_set("config", [1, 2]), "'config' field"),
    (_set("config_seed", "abc"), "its stored config is damaged (seed must be"),
    (_set("config_seed", 2**70), "its stored config is damaged (seed must be"),
    (_set("head", KeyError, None), "'head' field"),
    (_set("head", [1], None), "'head' field"),
    (_set("unfrozen", "layer4", None), "'unfrozen' field"),
    (_set("bn_train", "yes", None), "'bn_train' field"),
    (_set("unfrozen", ["layer3"], None), "names fine-tuned stages ['layer3'] where resnet18's top 1 are ['layer4']"),
    (lambda b: b["state_dict"].update({"layer4.0.conv1.weight": torch.zeros(3, 3)}), "of another shape: layer4.0.conv1.weight"),
    (lambda b: b["state_dict"].pop("layer4.1.bn2.running_var"), "missing: layer4.1.bn2.running_var"),
    (lambda b: b["state_dict"].update({"fc.weight": torch.zeros(3)}), "not in resnet18's stages ['layer4']: fc.weight"),
])
def test_model_pt_fields_of_the_wrong_type_are_refused_alike_by_predict_and_evaluate(
        made, tmp_path, capsys, monkeypatch, edit, needle):
    path = _crafted(made, tmp_path, edit)
    for code, err in _both(capsys, made, path, monkeypatch):
        assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {path}") and needle in err[0], err


def test_a_model_pt_for_another_backbone_without_fingerprint_is_refused(made, tmp_path, capsys, monkeypatch):
    """resnet18 tensors relabelled resnet34 (same layer4 shapes): no fingerprint is damage; with a
    genuine resnet34 fingerprint, the strict load finds layer4.2 missing."""
    def relabel(fingerprint):
        def edit(blob):
            blob["head"].update(backbone="resnet34", backbone_fingerprint=fingerprint, weights=None,
                                weights_sha256=None)
            blob["head"]["config"].update(backbone="resnet34", weights=None)
        return edit

    path = _crafted(made, tmp_path, relabel(None))
    for code, err in _both(capsys, made, path, monkeypatch):
        assert code == 1 and len(err) == 1 and "no fingerprint of the backbone" in err[0], err
    genuine = checkpoint.backbone_fingerprint(build_backbone("resnet34", None, 0))
    path = _crafted(made, tmp_path, relabel(genuine))
    for code, err in _both(capsys, made, path, monkeypatch):
        assert code == 1 and len(err) == 1 and "missing: layer4.2." in err[0], err


@pytest.mark.parametrize("name", ["model.pt", "head.pt"])
def test_a_tensor_claiming_more_numbers_than_it_stores_is_refused_before_it_is_copied(
        made, tmp_path, capsys, monkeypatch, name):
    """zeros(1).expand(...) stores 4 bytes; copying it for a checksum would allocate all it claims."""
    crafted = torch.zeros(1).expand(4096, 4096)
    if name == "model.pt":
        def edit(blob):
            blob["state_dict"]["layer4.0.conv1.weight"] = crafted
            blob["sha256"] = "0" * 32
    else:
        def edit(blob):
            key = next(iter(blob["state_dict"]))
            blob["state_dict"][key] = crafted
            blob["sha256"] = "0" * 32
    path = _crafted(made, tmp_path, edit, reseal=False, name=name)
    for code, err in _both(capsys, made, path, monkeypatch):
        assert code == 1 and len(err) == 1 and f"{path}: damaged: tensor" in err[0], err
        assert "claims 16,777,216 numbers of shape (4096, 4096) but stores 1" in err[0], err


def test_a_model_pt_whose_weights_file_was_moved_says_so(made, tmp_path, capsys, monkeypatch):
    moved = made["weights"].with_suffix(".moved")
    shutil.move(made["weights"], moved)
    try:
        for code, err in _both(capsys, made, made["model"], monkeypatch):
            assert code == 1 and len(err) == 1, err
            assert f"trained on backbone weights from {made['weights']}, which is not on this machine" in err[0], err
    finally:
        shutil.move(moved, made["weights"])


def test_evaluating_a_model_pt_takes_the_fine_tuning_path(made, capsys, monkeypatch):
    """Its backbone is no longer the frozen one: cached features of the frozen one would be wrong,
    which no CPU run shows in the accuracy (spy on the path taken)."""
    taken = []
    real = finetune.evaluate_dataset

    def spy_features(*a, **k):
        taken.append("features")
        raise DataError("the spy stops here")

    monkeypatch.setattr(finetune, "evaluate_dataset", lambda *a, **k: taken.append("images") or real(*a, **k))
    monkeypatch.setattr(features, "cached_features", spy_features)
    monkeypatch.setenv("CIFAR_TL_DATA", str(made["data"]))
    code, out, err = _cli(capsys, "evaluate", "--checkpoint", made["model"], "--quiet")
    assert code == 0 and taken == ["images"], (err, taken)
    code, out, err = _cli(capsys, "evaluate", "--checkpoint", made["head"], "--quiet")
    assert code == 1 and taken == ["images", "features"], err  # the spy sees the head.pt path too
