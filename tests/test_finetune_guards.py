"""Fine-tuning that cannot go well stops in one line: a diverging loss keeps the last good epoch
(nothing NaN is saved), --weight-decay has an upper bound, --bn-train needs two images a batch."""

import json
import math

import pytest
import torch

from cifar_tl import runs

from .conftest import cli_in_process as _cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
        "--test-size", "100", "--quiet")


def test_a_diverging_fine_tuning_stops_and_saves_nothing_nan(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_DATA", str(tmp_path / "data"))
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "run", *TINY, "--epochs", "3", "--unfreeze", "all", "--lr-decay", "1",
                        "--lr", "1", "--out", out)
    assert code == 1 and len(err) == 1, err
    assert "fine-tuning epoch" in err[0] and "loss became nan" in err[0] and "(--lr 1, --lr-decay 1)" in err[0], err
    assert not (out / "metrics.json").exists()
    history = json.loads((out / "history.json").read_text())
    assert history and all(math.isfinite(row[k]) for row in history for k in ("train_loss", "val_loss"))
    if (out / "model.pt").exists():  # the last good fine-tuning epoch
        blob = torch.load(out / "model.pt", weights_only=True)
        for t in [*blob["state_dict"].values(), *blob["head"]["state_dict"].values()]:
            assert t.isfinite().all()
    assert set(runs.written_files(out) or []) <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("value", ["1e308", "2", "inf"])
def test_weight_decay_has_an_upper_bound(tmp_path, capsys, value):
    code, _, err = _cli(capsys, "run", *TINY, "--unfreeze", "1", "--weight-decay", value, "--out", tmp_path / "x")
    assert code == 2 and len(err) == 1 and "weight-decay must be a number from 0 to 1" in err[0], err


def test_bn_train_with_batches_of_one_image_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_DATA", str(tmp_path / "data"))
    code, _, err = _cli(capsys, "run", *TINY, "--epochs", "2", "--unfreeze", "1", "--bn-train",
                        "--batch-size", "1", "--out", tmp_path / "x")
    assert code == 2 and len(err) == 1 and "--bn-train needs --batch-size 2 or more" in err[0], err
    assert not (tmp_path / "x").exists(), "refused before any work"
