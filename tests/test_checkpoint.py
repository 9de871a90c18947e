"""Checkpoints: plain state_dict + metadata, weights_only loading, precise refusals."""

import pytest
import torch

from cifar_tl import checkpoint
from cifar_tl.config import Config
from cifar_tl.errors import CheckpointError
from cifar_tl.models import MLPHead


def _head():
    torch.manual_seed(0)
    head = MLPHead(32, 5, hidden=(16, 16))
    head.standardizer.fit_stats(torch.randn(50, 32) * 3 + 1)
    return head


def test_round_trip(tmp_path):
    head, cfg = _head(), Config(backbone="resnet18", image_size=64, weights=None)
    path = checkpoint.save_head(tmp_path / "deep" / "er" / "head.pt", head, config=cfg,
                                class_names=list("abcde"), metrics={"test_accuracy": 0.5})
    assert path.exists()  # parent folders created
    # A plain torch.load with weights_only=True reads it: no pickled classes inside.
    blob = torch.load(path, weights_only=True)
    assert blob["backbone"] == "resnet18" and blob["class_names"] == list("abcde")
    loaded, meta = checkpoint.load_head(path, backbone="resnet18", num_classes=5, image_size=64)
    x = torch.randn(4, 32)
    assert torch.equal(loaded(x), head.eval()(x))
    assert meta["metrics"]["test_accuracy"] == 0.5 and meta["config"]["image_size"] == 64


def test_mismatch_is_refused_naming_each_difference(tmp_path):
    path = checkpoint.save_head(tmp_path / "h.pt", _head(), config=Config(backbone="resnet18", image_size=64),
                                class_names=list("abcde"))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_head(path, backbone="efficientnet_v2_s", num_classes=100, image_size=64)
    msg = str(e.value)
    assert "backbone" in msg and "num_classes" in msg and "image_size" not in msg


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "seed.model"
    torch.save(torch.nn.Linear(2, 2), path)  # what the tutorial saved
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.read_checkpoint(path)


def test_foreign_and_truncated_files(tmp_path):
    foreign = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a cifar_tl"):
        checkpoint.read_checkpoint(foreign)
    good = checkpoint.save_head(tmp_path / "h.pt", _head(), config=Config(), class_names=list("abcde"))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.read_checkpoint(cut)
