"""The tutorial's head by default: exactly its MLP with pretrained weights, a Standardize layer
first only for a random backbone (``standardize="auto"``), and old head.pt files still load."""

import pytest
import torch

from cifar_tl import checkpoint
from cifar_tl.config import Config
from cifar_tl.models import MLPHead, Standardize, TransferModel

from .conftest import cli_in_process


def _tutorial_fc(in_dim=1280, classes=100):
    """The tutorial's head, as it wrote it."""
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, classes),
    )


def test_the_bare_head_is_exactly_the_tutorials_mlp():
    head, fc = MLPHead(1280, 100), _tutorial_fc()
    assert [type(m) for m in head] == [type(m) for m in fc]
    assert {k: v.shape for k, v in head.state_dict().items()} == {k: v.shape for k, v in fc.state_dict().items()}
    head.load_state_dict(fc.state_dict())  # the tutorial's saved weights load as they are
    x = torch.randn(3, 1280)
    assert torch.equal(head(x), fc(x))


@pytest.mark.parametrize(("weights", "standardize", "expected"), [
    (None, "auto", True), ("imagenet", "auto", False), ("/some/file.pt", "auto", False),
    (None, False, False), ("imagenet", True, True),
])
def test_standardize_auto_is_on_for_random_weights_only(weights, standardize, expected):
    cfg = Config(weights=weights, standardize=standardize)
    assert cfg.standardizes() is expected


def test_from_config_builds_the_bare_head_for_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = TransferModel.from_config(Config(backbone="resnet18", weights=str(path), image_size=32))
    assert model.head.standardizer is None and isinstance(model.head[0], torch.nn.Linear)
    model = TransferModel.from_config(Config(backbone="resnet18", weights=None, image_size=32))
    assert isinstance(model.head[0], Standardize)


def test_cli_standardize_flags(tiny_cfg, tmp_path, capsys):
    args = ["run", "--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
            "--test-size", "100", "--epochs", "1", "--quiet", "--data-root", tiny_cfg.data_root]
    for flag, expected in (("--no-standardize", False), ("--standardize", True)):
        code, _, err = cli_in_process(capsys, *args, flag, "--out", tmp_path / flag)
        assert code == 0, err
        blob = torch.load(tmp_path / flag / "head.pt", weights_only=True)
        assert blob["standardize"] is expected and blob["config"]["standardize"] is expected
    for weights, expected in (("none", True), ("synthetic", False)):
        code, _, _ = cli_in_process(capsys, *args, "--weights", weights, "--out", tmp_path / weights)
        blob = torch.load(tmp_path / weights / "head.pt", weights_only=True)
        assert code == 0 and blob["standardize"] is expected and blob["config"]["standardize"] == "auto"


def test_an_old_bare_head_numbered_from_one_still_loads_and_predicts(tmp_path):
    """Earlier versions put an Identity first when not standardising: keys 1, 3, 5."""
    torch.manual_seed(0)
    head = MLPHead(16, 3, hidden=(8,))
    blob = checkpoint.head_blob(head, config=Config(backbone="resnet18", image_size=32), class_names=list("abc"))
    blob["state_dict"] = {f"{int(k[0]) + 1}{k[1:]}": v for k, v in blob["state_dict"].items()}
    assert set(blob["state_dict"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    path = tmp_path / "old.pt"
    torch.save(checkpoint.with_checksum(blob), path)
    loaded, _ = checkpoint.load_head(path)
    x = torch.randn(5, 16)
    assert torch.equal(loaded(x), head.eval()(x))


def test_an_old_standardised_head_still_loads_and_predicts(tmp_path):
    torch.manual_seed(0)
    head = MLPHead(16, 3, hidden=(8,), standardize=True)
    head.standardizer.fit_stats(torch.randn(40, 16) * 5 + 2)
    path = checkpoint.save_head(tmp_path / "h.pt", head, config=Config(backbone="resnet18", image_size=32,
                                                                       weights=None, standardize=True),
                                class_names=list("abc"))
    loaded, meta = checkpoint.load_head(path)
    x = torch.randn(5, 16) * 5 + 2
    assert meta["standardize"] is True and torch.equal(loaded(x), head.eval()(x))


def test_standardize_must_be_true_false_or_auto():
    with pytest.raises(Exception, match="standardize must be true, false or 'auto'"):
        Config(standardize="yes").validate()
