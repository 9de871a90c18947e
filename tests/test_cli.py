"""The command line, end to end, as a new user runs it: offline, on the CPU."""

import json
import os
import time

import pytest
import torch
from PIL import Image

from cifar_tl.models import build_backbone, weights_file

from .conftest import run_cli


def test_smoke_run_writes_every_file_and_learns(smoke_run):
    out, _, proc = smoke_run
    for name in ("metrics.json", "history.json", "head.pt", "config.json", "history.png", "confusion.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "test_top5", "n_test", "seconds", "config"} <= set(m)
    assert m["test_accuracy"] >= 0.25, m["test_accuracy"]  # chance is 0.01
    assert m["n_test"] == 500 and m["config"]["profile"] == "smoke"
    assert {"load", "extract", "train", "evaluate"} <= set(m["seconds"])
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == m["config"]["epochs"]


def test_evaluate_reproduces_the_run(smoke_run):
    out, env, _ = smoke_run
    proc = run_cli("evaluate", "--checkpoint", out / "head.pt", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    acc = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert f"test accuracy {acc:.4f}" in proc.stdout


def test_predict_prints_top5(smoke_run, tmp_path):
    out, env, _ = smoke_run
    img = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (220, 20, 20)).save(img)
    proc = run_cli("predict", "--checkpoint", out / "head.pt", img, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].endswith("red.png") and len(lines) == 6 and "%" in lines[1]


def test_full_profile_offline_fails_fast_in_one_line(tmp_path):
    env = {"CIFAR_TL_DATA": str(tmp_path / "data"), "TORCH_HOME": str(tmp_path / "torch")}
    t0 = time.perf_counter()
    proc = run_cli("run", "--profile", "full", "--out", tmp_path / "out", env=env, timeout=120)
    assert time.perf_counter() - t0 < 60
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "CIFAR-100" in err and "download" in err and "--profile smoke" in err


@pytest.mark.parametrize("args, needle", [
    (["--epochs", "0"], "epochs"),
    (["--batch-size", "-3"], "batch-size"),
    (["--backbone", "efficientnet_v2_s", "--image-size", "8"], "below"),  # smoke's resnet18 takes 8 px
    (["--backbone", "vgg99"], "vgg19"),
    (["--backbone", "efficientnet_v2"], "efficientnet_v2_s"),
    (["--unfreeze", "-1"], "unfreeze"),
    (["--unfreeze", "some"], "unfreeze"),
    (["--precision", "int8"], "precision"),
    (["--image-size", "100000"], "4096"),
    (["--profile", "huge"], "profile"),
    (["--source", "mnist"], "source"),
])
def test_bad_arguments_exit_2_in_one_line(args, needle, tmp_path):
    proc = run_cli("run", "--profile", "smoke", "--out", tmp_path, *args) if "--profile" not in args \
        else run_cli("run", "--out", tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """weights="imagenet" goes through torchvision's real loader, fed from a local cache file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(123)
    reference = torch.hub.load_state_dict_from_url  # the real function stays in place
    from torchvision.models import resnet18

    state = resnet18(weights=None).state_dict()
    path = weights_file("resnet18")
    assert str(path).startswith(str(tmp_path)) and path.name.startswith("resnet18-")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    # Not torchvision's file: its sha256 made to match the prefix in the name (test_backbones.py
    # shows that the real hash of a file that is not torchvision's is refused).
    from cifar_tl import backbones

    prefix = path.name.split("-")[1].split(".")[0]
    monkeypatch.setattr(backbones, "weights_digest", lambda p: prefix + "0" * 56)
    bb = build_backbone("resnet18", "imagenet")
    assert torch.equal(bb.conv1.weight, state["conv1.weight"])
    assert torch.hub.load_state_dict_from_url is reference


def test_imagenet_weights_missing_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from cifar_tl.errors import AssetMissingError

    with pytest.raises(AssetMissingError) as e:
        build_backbone("resnet18", "imagenet")
    assert "download" in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(weights_file("resnet18"))
