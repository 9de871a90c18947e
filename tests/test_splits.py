"""The validation split: held out of training (class-balanced, seeded), what every epoch and every
choice is judged on; the test split is evaluated once, at the end."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from cifar_tl import data, engine, pipeline
from cifar_tl.config import Config
from cifar_tl.errors import DataError

from .conftest import cli_in_process


def _ids(ds) -> set:
    """Which source images a split holds (a Subset's indices into its source)."""
    return set(ds.indices)


def test_default_holds_out_ten_percent_class_balanced_and_disjoint(tiny_cfg):
    train, val, test = data.build_datasets(tiny_cfg)  # 200 training images, 100 classes
    assert (len(train), len(val)) == (180, 20)
    assert val.split == "val" and train.split == "train" and test.split == "test"
    assert not _ids(train) & _ids(val)
    assert max(Counter(val.targets).values()) == 1  # 20 images of 20 different classes
    assert set(train.targets) == set(range(100)), "every class keeps a training image"
    # Validation is evaluated like test: no random flip.
    assert not any("Flip" in type(t).__name__ for t in val.transform.transforms)
    assert any("Flip" in type(t).__name__ for t in train.transform.transforms)


def test_the_split_depends_on_the_seed_only(tiny_cfg):
    a = data.build_datasets(tiny_cfg).val
    b = data.build_datasets(tiny_cfg).val
    c = data.build_datasets(tiny_cfg.replace(seed=1)).val
    assert a.indices == b.indices and a.indices != c.indices


def test_val_size_sets_the_count_and_zero_is_the_tutorials_recipe(tiny_cfg):
    train, val, _ = data.build_datasets(tiny_cfg.replace(val_size=50))
    assert (len(train), len(val)) == (150, 50)
    train, val, _ = data.build_datasets(tiny_cfg.replace(val_size=0))
    assert val is None and len(train) == 200


def test_a_validation_split_that_would_empty_a_class_is_refused(tiny_cfg, capsys):
    with pytest.raises(DataError, match="--val-size 150 is more than the training split can spare: at most 100"):
        data.build_datasets(tiny_cfg.replace(val_size=150))
    code, _, err = cli_in_process(capsys, "run", "--profile", "smoke", "--backbone", "resnet18", "--image-size",
                                  "32", "--train-size", "200", "--val-size", "150", "--quiet",
                                  "--data-root", tiny_cfg.data_root, "--out", tiny_cfg.data_root + "/../out")
    assert code == 1 and len(err) == 1 and "--val-size 150" in err[0]


def test_val_size_must_be_a_count(capsys):
    code, _, err = cli_in_process(capsys, "run", "--profile", "smoke", "--val-size", "-1")
    assert code == 2 and "--val-size" in err[0] and "0 or more" in err[0]
    with pytest.raises(Exception, match="val-size must be an integer >= 0"):
        Config(val_size=2.5).validate()


def test_a_config_stored_before_the_split_keeps_training_on_every_image():
    """A run started before validation existed resumes with its own split: none."""
    old = Config().to_dict()
    del old["val_size"]
    assert Config.from_dict(old).val_size == 0


def test_folder_val_is_the_validation_split_and_test_holds_out_of_train(tmp_path):
    from .test_folders import photos

    root = photos(tmp_path / "p", {"train/a": 6, "train/b": 6, "val/a": 2, "val/b": 1})
    cfg = Config.for_profile("smoke", source=f"folder:{root}", train_size=None, test_size=None)
    train, val, test = data.build_datasets(cfg)
    assert len(val) == 3 and all("/val/" in p for p in val.paths) and val.split == "val"
    assert all("/train/" in p for p in [*train.paths, *test.paths])
    assert not set(train.paths) & set(test.paths)
    # test/ beside train/ and no val/: validation comes out of train/.
    root2 = photos(tmp_path / "q", {"train/a": 10, "train/b": 10, "test/a": 2, "test/b": 2})
    train, val, test = data.build_datasets(cfg.replace(source=f"folder:{root2}"))
    assert len(val) == 2 and all("/train/" in p for p in val.paths) and all("/test/" in p for p in test.paths)
    assert not set(train.paths) & set(val.paths)
    # --val-size 0 ignores a val/ folder.
    assert data.build_datasets(cfg.replace(val_size=0)).val is None


def test_folder_val_with_an_unknown_class_is_refused(tmp_path):
    from .test_folders import photos

    root = photos(tmp_path / "p", {"train/a": 4, "train/b": 4, "val/zebra": 1})
    cfg = Config.for_profile("smoke", source=f"folder:{root}", train_size=None, test_size=None)
    with pytest.raises(DataError, match="zebra"):
        data.build_datasets(cfg)


@pytest.mark.parametrize("cache", [True, False], ids=["cached-features", "tutorial-path"])
def test_epochs_are_judged_on_validation_and_test_is_evaluated_once(tiny_cfg, tmp_path, monkeypatch, cache):
    seen = []
    real = engine.evaluate

    def spy(model, loader, *a, **k):
        ev = real(model, loader, *a, **k)
        seen.append(ev.n)
        return ev

    monkeypatch.setattr(engine, "evaluate", spy)
    cfg = tiny_cfg.replace(val_size=30, test_size=100, epochs=2, cache=cache)
    metrics = pipeline.run(cfg, tmp_path / "run")
    assert seen == [30, 30, 100], "two epochs on validation, then test once"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all("val_accuracy" in row and not any(k.startswith("test") for k in row) for row in history)
    assert metrics["val_accuracy"] == history[-1]["val_accuracy"] and metrics["n_val"] == 30
    assert metrics["n_test"] == 100 and metrics["n_train"] == 170


def test_cli_prints_validation_per_epoch_and_test_once(tiny_cfg, tmp_path, capsys):
    code, out, err = cli_in_process(capsys, "run", "--profile", "smoke", "--backbone", "resnet18", "--image-size",
                                    "32", "--train-size", "200", "--test-size", "100", "--epochs", "3", "--quiet",
                                    "--data-root", tiny_cfg.data_root, "--out", tmp_path / "run")
    assert code == 0, err
    lines = out.splitlines()
    assert len([x for x in lines if x.startswith("epoch ") and "validation accuracy" in x]) == 3
    assert len([x for x in lines if "test accuracy" in x]) == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"val_accuracy", "test_accuracy", "n_val", "n_test"} <= set(metrics)


def test_without_validation_the_epochs_report_training_only(tiny_cfg, tmp_path):
    metrics = pipeline.run(tiny_cfg.replace(val_size=0, epochs=1), tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "val_accuracy" not in history[0] and metrics["val_accuracy"] is None and metrics["n_train"] == 200


def test_lr_find_never_touches_the_test_or_validation_split(tiny_cfg, tmp_path, monkeypatch):
    from cifar_tl import features

    splits = []
    real = features.cached_features

    def spy(cfg, ds, *a, **k):
        splits.append(ds.split)
        return real(cfg, ds, *a, **k)

    monkeypatch.setattr(features, "cached_features", spy)
    pipeline.lr_find(tiny_cfg, tmp_path)
    assert "test" not in splits and "val" not in splits


def test_hold_out_composes_indices_into_the_source(tiny_cfg):
    """Both splits index the source directly (no Subset of a Subset), and together they are the
    training subset."""
    full = data.build_source(tiny_cfg.replace(train_size=150), train=True)  # 150 of 200 generated
    assert isinstance(full, data.Subset)
    train, val = data.hold_out_val(full, 20, seed=0)
    assert train.dataset is full.dataset and val.dataset is full.dataset
    assert sorted(train.indices + val.indices) == sorted(full.indices)
    assert np.array_equal(np.asarray(full.dataset.targets)[val.indices], np.asarray(val.targets))
    assert torch.equal(torch.as_tensor(val.data), torch.as_tensor(full.dataset.data[val.indices]))
