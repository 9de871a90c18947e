"""What a person gives, checked before any work: options that would do nothing, notebook
parameters, numpy and path values, the notebook-facing calls, and messages that say what is meant."""

import io
import json
import unicodedata

import numpy as np
import pytest

from cifar_tl import Config, notebook_config, pipeline, runs, widgets
from cifar_tl.console import enable_notices
from cifar_tl.errors import ConfigError, DataError
from cifar_tl.synthetic import SyntheticCIFAR

from .conftest import cli_in_process as _cli
from .test_folders import photos

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "100",
        "--test-size", "100", "--quiet")
TINY = (*DATA, "--epochs", "1")


# --------------------------------------------------------------------------- options that do nothing
@pytest.mark.parametrize("flag", [["--bn-train"], ["--head-epochs", "2"], ["--lr-decay", "0.5"],
                                  ["--weight-decay", "0.01"]])
def test_fine_tuning_options_without_unfreeze_are_refused(tmp_path, capsys, flag):
    for unfreeze in ([], ["--unfreeze", "0"]):
        code, _, err = _cli(capsys, "run", *TINY, *unfreeze, *flag, "--out", tmp_path / "out")
        assert code == 2 and len(err) == 1 and flag[0] in err[0] and "--unfreeze" in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_library_says_which_fine_tuning_options_a_frozen_run_ignores(tiny_cfg, tmp_path):
    notices = io.StringIO()
    enable_notices(stream=notices)
    pipeline.run(tiny_cfg.replace(epochs=1, weight_decay=0.1, bn_train=True), tmp_path / "out")
    assert "weight_decay, bn_train only act when fine-tuning" in notices.getvalue()
    notices.truncate(0)
    pipeline.run(tiny_cfg.replace(epochs=1), tmp_path / "plain")  # the profile's lr_decay: no notice
    assert "only act when fine-tuning" not in notices.getvalue()
    enable_notices()


def test_lr_find_on_one_class_is_refused(tmp_path, capsys):
    src = photos(tmp_path / "photos", {"train/red": 6, "test/red": 2})
    code, _, err = _cli(capsys, "lr-find", *DATA, "--source", f"folder:{src}", "--weights", "none",
                        "--out", tmp_path)
    assert code == 1 and len(err) == 1 and "at least 2 classes" in err[0], err
    assert not (tmp_path / "lr_find.png").exists()


def test_lr_find_without_the_cache_sweeps_the_model_on_images(tmp_path, capsys):
    code, out, err = _cli(capsys, "lr-find", *DATA, "--no-cache", "--out", tmp_path)
    assert code == 0 and "suggested learning rate" in out, err
    assert (tmp_path / "lr_find.png").is_file()


# --------------------------------------------------------------------------- notebook parameters
@pytest.mark.parametrize("params, needle", [
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"epochs": -1}, "epochs must be a positive integer, got -1"),
    ({"epochs": 1.5}, "epochs must be a positive integer, got 1.5"),
    ({"tutorial_images": 0}, "tutorial_images must be a positive whole number, got 0"),
    ({"image_index": -1}, "image_index must be an index"),
    ({"threshold": float("nan")}, "threshold must be a finite number"),
    ({"batch_size": np.int64(-8)}, "batch-size must be a positive integer, got -8"),
])
def test_bad_notebook_parameters_are_refused_at_once_in_one_line(params, needle):
    with pytest.raises(ConfigError) as e:
        notebook_config("smoke", **params)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("notebook parameters")


def test_notebook_parameters_become_the_config():
    assert notebook_config("smoke", epochs=None).epochs == Config.for_profile("smoke").epochs
    cfg = notebook_config("smoke", epochs=np.int64(2), lr=np.float32(0.5), tutorial_images=96,
                          image_index=0, compare_workers=True, image_path=None)
    assert (cfg.epochs, cfg.lr) == (2, 0.5) and type(cfg.epochs) is int and type(cfg.lr) is float


# --------------------------------------------------------------------------- notebook-facing API
def test_numpy_scalars_and_paths_are_accepted(tmp_path):
    (tmp_path / "photos").mkdir()
    cfg = Config.for_profile("smoke", epochs=np.int64(3), lr=np.float64(1e-3), batch_size=np.int32(16),
                             cache=np.bool_(True), hidden=(np.int64(64), 32), data_root=tmp_path / "data",
                             source=tmp_path / "photos", seed=np.uint8(4))
    assert cfg.validate() is cfg
    assert (cfg.epochs, cfg.batch_size, cfg.hidden, cfg.data_root, cfg.source, cfg.seed) == (
        3, 16, (64, 32), str(tmp_path / "data"), f"folder:{tmp_path / 'photos'}", 4)
    json.dumps(cfg.to_dict())  # plain values: config.json and checkpoints store them


@pytest.mark.parametrize("value", ["²", "٣x", "1.5", "-1", "ALL"])
def test_a_bad_unfreeze_is_one_config_error_naming_the_option(value, capsys):
    with pytest.raises(ConfigError, match="unfreeze must be"):
        Config(unfreeze=value).validate()
    code, _, err = _cli(capsys, "run", "--profile", "smoke", "--unfreeze", value)
    assert code == 2 and len(err) == 1 and "--unfreeze" in err[0] and "_unfreeze" not in err[0], err


def test_pipeline_calls_with_a_dict_say_to_build_a_config(tmp_path):
    for call in (lambda: pipeline.run({"epochs": 1}, tmp_path / "out"),
                 lambda: pipeline.run({"epochs": 1}, tmp_path / "out", resume=True),
                 lambda: pipeline.lr_find({"epochs": 1}, tmp_path)):
        with pytest.raises(ConfigError, match="needs a Config, got a dict: build one with Config.for_profile"):
            call()


@pytest.mark.parametrize("n", [1, 3, 8, 9, 200])
def test_the_static_dataset_browser_shows_up_to_its_size(n):
    ds = SyntheticCIFAR(train=False, seed=0)
    if n > 64:
        with pytest.raises(ConfigError, match="n_static must be"):
            widgets.dataset_browser(ds, n_static=n, interactive=False)
        return
    fig = widgets.dataset_browser(ds, n_static=n, interactive=False)
    assert sum(bool(ax.images) for ax in fig.axes) == n


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_the_dataset_browser_refuses_a_count_that_is_not_one(n):
    with pytest.raises(ConfigError, match="n_static must be"):
        widgets.dataset_browser(SyntheticCIFAR(train=False, seed=0), n_static=n, interactive=False)


# --------------------------------------------------------------------------- messages
def test_an_out_that_is_a_dangling_link_says_so(tmp_path, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    code, _, err = _cli(capsys, "run", *TINY, "--out", tmp_path / "out")
    assert code == 1 and len(err) == 1 and "is a link to" in err[0] and "does not exist" in err[0], err
    assert "File exists" not in err[0]


def test_hints_quote_a_path_with_spaces_so_it_can_be_pasted(tmp_path, capsys):
    out = tmp_path / "my runs" / "first try"
    assert _cli(capsys, "run", *TINY, "--out", out)[0] == 0
    code, _, err = _cli(capsys, "run", *TINY, "--out", out)
    assert code == 1 and f"--resume '{out}'" in err[0], err
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert code == 1 and f"--resume '{out}' --epochs N" in err[0], err
    assert runs.interrupted(out, "training", 1, 2, False).args[0].endswith(f"--resume '{out}'")


def test_the_resume_message_counts_epochs_as_epochs_does(tmp_path, capsys):
    """A fine-tuning run: --epochs counts its fine-tuning epochs (the head's epoch comes first)."""
    out = tmp_path / "ft"
    assert _cli(capsys, "run", *TINY, "--unfreeze", "1", "--epochs", "2", "--out", out)[0] == 0
    code, _, err = _cli(capsys, "run", "--resume", out, "--epochs", "1")
    assert code == 2 and "already trained 2 fine-tuning epochs" in err[0], err
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert code == 1 and "already finished all 2 fine-tuning epochs" in err[0], err


def test_download_into_a_file_names_its_own_option(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = _cli(capsys, "download", "--root", tmp_path / "file")
    assert code == 2 and len(err) == 1 and "--root" in err[0] and "--data-root" not in err[0], err


def test_class_names_in_two_unicode_forms_are_one_class(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    src = photos(tmp_path / "p", {f"train/{nfd}": 3, "train/tea": 3, f"test/{nfc}": 2, "test/tea": 2})
    train = Config.for_profile("smoke", source=f"folder:{src}")
    from cifar_tl import data
    tr, _, te = data.build_datasets(train.replace(train_size=None, test_size=None))
    assert tr.classes == te.classes == [nfc, "tea"]
    assert sorted(te.targets) == [0, 0, 1, 1]


@pytest.mark.parametrize("names", [("café", unicodedata.normalize("NFD", "café")), ("cat", "cat ")])
def test_class_folders_that_would_print_as_one_are_refused_with_repr(tmp_path, names):
    src = photos(tmp_path / "p", {f"train/{names[0]}": 3, f"train/{names[1]}": 3})
    from cifar_tl import data
    with pytest.raises(DataError) as e:
        data.image_folder(src, train=True)
    assert repr(names[0]) in str(e.value) and repr(names[1]) in str(e.value)


def test_a_test_class_with_a_trailing_space_is_shown_with_repr(tmp_path):
    src = photos(tmp_path / "p", {"train/cat": 3, "train/dog": 3, "test/cat ": 2, "test/dog": 2})
    from cifar_tl import data
    with pytest.raises(DataError) as e:
        data.image_folder(src, train=False)
    assert "'cat ' (training has 'cat')" in str(e.value)


def test_the_missing_cifar_hint_quotes_a_data_root_with_spaces(tmp_path):
    from cifar_tl import data
    from cifar_tl.errors import AssetMissingError

    root = tmp_path / "my data"
    with pytest.raises(AssetMissingError) as e:
        data.cifar100(root / "cifar100", train=True, download=False)
    assert f"download --root '{root}'" in str(e.value)


def test_out_of_memory_hint_quotes_the_folder(tmp_path, capsys, monkeypatch, tiny_cfg):
    """A run with a completed epoch runs out of memory: the hint to resume it can be pasted."""
    from cifar_tl import engine

    out = tmp_path / "my runs"
    pipeline.run(tiny_cfg.replace(epochs=1), out)

    def fit(*_a, **_k):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(engine, "fit", fit)
    code, _, err = _cli(capsys, "run", "--resume", out, "--epochs", "2")
    assert code == 1 and "out of memory" in err[0] and f"--resume '{out}'" in err[0], err
