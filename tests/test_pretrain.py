"""``--weights synthetic``: pretrained once per machine, deterministic, cached under torch's hub with a
checksum, rebuilt with one notice when damaged, safe when two processes build at once."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest
import torch

from cifar_tl import Config, pretrain, source_task
from cifar_tl.backbones import build_backbone
from cifar_tl.config import normalize_weights

from .conftest import ROOT, cli_in_process

# A recipe of seconds (192 images, one epoch) for the mechanics; the real one is pretrain.RECIPE.
TINY = {"image_size": 32, "n_per_class": 1, "epochs": 1, "batch_size": 64, "lr": 2e-3, "weight_decay": 5e-4}


@pytest.fixture
def own_hub(tmp_path, monkeypatch, one_thread):
    """An empty TORCH_HOME and the tiny recipe: what a first use on a new machine sees."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pretrain, "RECIPE", dict(TINY))
    calls = []
    real = pretrain.train
    monkeypatch.setattr(pretrain, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    return tmp_path / "torch" / "hub" / "checkpoints", calls


def _files(folder):
    return sorted(p.name for p in folder.glob("cifar_tl-synthetic-*.pt"))


def test_built_once_beside_torch_weights_with_the_recipe_and_digest_in_its_name(own_hub):
    folder, calls = own_hub
    a = build_backbone("resnet18", "synthetic")
    (name,) = _files(folder)
    assert folder == pretrain.checkpoints_dir() and folder.parent == __import__("pathlib").Path(torch.hub.get_dir())
    assert re.fullmatch(rf"cifar_tl-synthetic-resnet18-32px-v{pretrain.VERSION}-seed0-[0-9a-f]{{10}}\.pt", name)
    import hashlib

    assert hashlib.sha256((folder / name).read_bytes()).hexdigest().startswith(name[-13:-3])
    b = build_backbone("resnet18", "synthetic", seed=5)  # a run's seed does not change the weights
    assert calls == [1] and _files(folder) == [name]  # the second call loaded the file
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    random = build_backbone("resnet18", None)
    assert not torch.equal(a.conv1.weight, random.conv1.weight)


@pytest.mark.parametrize("progress", [True, False])
def test_the_first_build_shows_a_progress_bar_unless_quiet(own_hub, capfd, progress):
    """``--quiet`` (cfg.progress False) reaches the pretraining's bar through the model's config."""
    import cifar_tl

    cfg = cifar_tl.Config.for_profile("smoke", progress=progress)
    cifar_tl.models.TransferModel.from_config(cfg)
    err = capfd.readouterr().err
    assert ("pretraining resnet18 on generated images" in err) == progress, err[-300:]


def test_same_seed_same_weights_other_seed_other_weights(one_thread):
    def extractor(seed):
        torch.manual_seed(seed)
        m = __import__("torchvision").models.resnet18()
        m.num_features, m.fc = m.fc.in_features, torch.nn.Identity()
        return m

    a, b = pretrain.train(extractor(0), TINY, 0), pretrain.train(extractor(0), TINY, 0)
    c = pretrain.train(extractor(0), TINY, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("truncate", [True, False], ids=["truncated", "flipped-byte"])
def test_a_damaged_file_is_rebuilt_with_one_notice(own_hub, caplog, truncate):
    from .conftest import damaged

    folder, calls = own_hub
    good = build_backbone("resnet18", "synthetic").state_dict()
    (name,) = _files(folder)
    path = folder / name
    path.write_bytes(damaged(path.read_bytes(), 0.6, 0x5A, truncate))
    with caplog.at_level(logging.INFO, logger="cifar_tl"):
        again = build_backbone("resnet18", "synthetic").state_dict()
    notices = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notices) == 1 and "damaged" in notices[0].getMessage() and "rebuilding" in notices[0].getMessage()
    assert calls == [1, 1] and _files(folder) == [name]  # rebuilt, identically (deterministic)
    assert all(torch.equal(good[k], again[k]) for k in good)


def test_two_processes_building_at_once_share_one_file(tmp_path):
    code = ("import logging, sys; from cifar_tl import pretrain, console; console.enable_notices();"
            f"pretrain.RECIPE = {TINY!r}; from cifar_tl.backbones import build_backbone;"
            "build_backbone('resnet18', 'synthetic'); print('ok')")
    env = {"TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("pretraining resnet18 on generated images (once") for o, _ in outs) == 1, outs
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert len(_files(folder)) == 1 and not list(folder.glob(".*.tmp"))


def test_the_source_task_has_many_classes_none_of_them_a_smoke_class():
    from cifar_tl.synthetic import CLASSES, TEXTURES

    images, labels = source_task.make_source(2, 0)
    assert len(source_task.CLASSES) >= 150 and not set(source_task.CLASSES) & set(CLASSES)
    assert not set(source_task.PATTERNS) & set(TEXTURES)
    assert images.shape == (2 * len(source_task.CLASSES), 32, 32, 3) and images.dtype.name == "uint8"
    assert sorted(set(labels.tolist())) == list(range(len(source_task.CLASSES)))
    again, _ = source_task.make_source(2, 0)
    assert (images == again).all()


def test_synthetic_is_a_weights_name_like_imagenet():
    assert normalize_weights("Synthetic") == "synthetic"
    assert Config(weights="synthetic").weights == "synthetic"
    cfg = Config.for_profile("smoke")
    assert (cfg.weights, cfg.backbone, cfg.image_size, cfg.standardizes()) == ("synthetic", "resnet18", 32, False)
    assert Config.for_profile("smoke", weights="none").weights is None


def test_run_help_names_synthetic(capsys):
    code, out, _ = cli_in_process(capsys, "run", "--help")
    assert code == 0 and "synthetic" in out


def blob_standardize(out):
    return torch.load(out / "head.pt", weights_only=True)["standardize"]


def test_the_smoke_run_uses_synthetic_weights_and_the_bare_head(smoke_run):
    out, env, proc = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["weights"] == "synthetic" and m["config"]["backbone"] == "resnet18"
    assert m["config"]["standardize"] == "auto" and blob_standardize(out) is False
    assert "pretraining" not in proc.stdout  # the session's weights were reused, not rebuilt
    blob = torch.load(out / "head.pt", weights_only=True)
    assert blob["weights"] == "synthetic" and blob["weights_sha256"] is None
    assert m["test_accuracy"] >= 0.25  # chance is 0.01
