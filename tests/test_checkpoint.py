"""Checkpoints: plain state_dict + metadata, weights_only loading, precise refusals."""

import hashlib
import re

import pytest
import torch

from cifar_tl import checkpoint
from cifar_tl.config import Config
from cifar_tl.errors import AssetMissingError, CheckpointError
from cifar_tl.models import MLPHead

from .conftest import run_cli


def _head():
    torch.manual_seed(0)
    head = MLPHead(32, 5, hidden=(16, 16), standardize=True)
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


def test_pickled_module_is_refused(tmp_path_factory):
    # Not tmp_path: its folder is named after this test, so "refused" would match the path itself.
    path = tmp_path_factory.mktemp("pickles") / "seed.model"
    torch.save(torch.nn.Linear(2, 2), path)  # what the tutorial saved
    expected = f"{path}: refused: it holds pickled Python objects (torch.nn.modules.linear.Linear)"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
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


# --------------------------------------------------------------------------- untrusted metadata
def _saved(tmp_path, name="h.pt", **cfg):
    cfg = Config(**{"backbone": "resnet18", "image_size": 64, "weights": None, **cfg})
    return checkpoint.save_head(tmp_path / name, _head(), config=cfg, class_names=list("abcde"))


def _edited(path, reseal: bool, **changes):
    """The checkpoint with fields changed as someone editing the file would, checksum recomputed or not."""
    blob = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if key.startswith("config_"):
            blob["config"][key[len("config_"):]] = value
        else:
            blob[key] = value
    torch.save(checkpoint.with_checksum(blob) if reseal else blob, path)
    return path


@pytest.mark.parametrize("changes", [dict(image_size=100000), dict(image_size=48), dict(class_names=list("abcdX")),
                                     dict(backbone_fingerprint="0" * 24), dict(config_seed=7),
                                     dict(metrics={"test_accuracy": 0.99})])
def test_the_checksum_covers_the_metadata(tmp_path, changes):
    path = _edited(_saved(tmp_path), reseal=False, **changes)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_checkpoint(path)
    assert str(e.value) == (f"{path}: damaged: its weights or metadata do not match their checksum; "
                            "copy or save it again")


@pytest.mark.parametrize("changes, needle", [
    (dict(image_size=100000), "'image_size' field (an integer from 1 to 4096 expected, got 100000)"),
    (dict(image_size=-5), "'image_size' field (an integer from 1 to 4096 expected, got -5)"),
    (dict(image_size=True), "'image_size' field"),
    (dict(image_size="64"), "'image_size' field"),
    (dict(num_classes=0), "'num_classes' field"),
    (dict(class_names=[1, 2, 3, 4, 5]), "'class_names' field"),
    (dict(class_names=list("abcd")), "'class_names' field (5 class names (strings) expected"),
    (dict(hidden=[16, -16]), "'hidden' field"),
    (dict(standardize="yes"), "'standardize' field"),
    (dict(backbone="resnet18; rm -rf"), "'backbone' field"),
    (dict(weights=3), "'weights' field"),
    (dict(fine_to_coarse=[0, 1, 2, 3, 4], coarse_classes=["x"]), "'fine_to_coarse' field"),
    (dict(config=[1, 2]), "'config' field"),
    (dict(feature_dim=2**20, hidden=[2**20]), "numbers described"),  # refused before allocating 4 TB
    (dict(config_seed=2**40), "its stored config is damaged (seed must be an integer from 0 to 2**32-1"),
    (dict(config_image_size="big"), "its stored config is damaged"),
    (dict(config_source="folder:"), "its stored config is damaged"),
    (dict(config_image_size=48), "disagrees with its metadata (image_size: config has 48, metadata 64)"),
])
def test_every_metadata_field_is_validated_on_load(tmp_path, changes, needle):
    """Even with a valid checksum (someone recomputed it), impossible values are one-line refusals."""
    path = _edited(_saved(tmp_path), reseal=True, **changes)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_head(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_resealed_checkpoint_with_valid_values_loads(tmp_path):
    """The checks above refuse damage, not edits as such: proof that they are not refusing everything."""
    path = _edited(_saved(tmp_path), reseal=True, class_names=list("vwxyz"), metrics={"note": "edited"})
    _, meta = checkpoint.load_head(path)
    assert meta["class_names"] == list("vwxyz")


def test_an_image_or_text_given_as_checkpoint_says_what_it_is(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(photo)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_checkpoint(photo)
    assert str(e.value).startswith(f"{photo}: not a torch checkpoint: it is a PNG image")
    notes = tmp_path / "notes.pt"
    notes.write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint: truncated, damaged or another kind"):
        checkpoint.read_checkpoint(notes)
    proc = run_cli("predict", "--checkpoint", photo, photo)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{photo}: not a torch checkpoint: it is a PNG image" in proc.stderr
    assert "pickled" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_weights_from_a_file_are_stored_absolute_with_their_digest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(3)}, tmp_path / "r18.pth")
    path = _saved(tmp_path, weights="r18.pth")
    _, meta = checkpoint.load_head(path)
    assert meta["weights"] == str(tmp_path / "r18.pth")  # absolute: predict works from any folder
    assert meta["weights_sha256"] == hashlib.sha256((tmp_path / "r18.pth").read_bytes()).hexdigest()
    checkpoint.check_weights_file(meta, path)  # unchanged: fine
    torch.save({"w": torch.zeros(3)}, tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as e:
        checkpoint.check_weights_file(meta, path)
    assert "the weights file changed" in str(e.value) and str(tmp_path / "r18.pth") in str(e.value)
    (tmp_path / "r18.pth").unlink()
    with pytest.raises(AssetMissingError, match="not on this machine"):
        checkpoint.check_weights_file(meta, path)
