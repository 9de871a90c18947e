"""Run folders: nothing of a user's is overwritten or deleted, damaged resume files are named in
one line, a diverging loss stops with the last good epoch kept, metrics are strict JSON."""

import json

import pytest
import torch

from cifar_tl import engine, pipeline, runs
from cifar_tl.config import Config
from cifar_tl.errors import CifarTLError, TrainingDiverged
from cifar_tl.features import FeatureLoader
from cifar_tl.models import MLPHead

from .conftest import cli_in_process as _cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "100",
        "--test-size", "100", "--epochs", "2", "--quiet")




def _strict(path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}: not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_folder_of_the_users_is_refused_and_left_alone(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "head.pt").write_bytes(b"my own file")
    (mine / "notes.txt").write_text("keep me")
    code, _, err = _cli(capsys, "run", *TINY, "--out", mine)
    assert code == 1 and len(err) == 1 and "not a cifar_tl run folder" in err[0] and "--overwrite" in err[0]
    assert (mine / "head.pt").read_bytes() == b"my own file" and (mine / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_only_the_files_a_run_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "run", *TINY, "--out", out)[0] == 0
    written = runs.written_files(out)
    assert {"config.json", "head.pt", "state.pt", "metrics.json", "history.json", "history.png"} <= set(written)
    (out / "notes.txt").write_text("mine")
    (out / "history.png").unlink()  # a file of the run that the user removed: no error
    code, _, err = _cli(capsys, "run", *TINY, "--out", out)
    assert code == 1 and "already holds a run" in err[0]
    assert _cli(capsys, "run", *TINY, "--out", out, "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert _strict(out / "metrics.json")["epochs"] == 2


def test_a_damaged_marker_cannot_delete_anything_outside_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "precious").write_text("x")
    (out / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT,
                                               "files": ["../precious", "/etc/passwd", "ok.txt", 3]}))
    assert runs.written_files(out) == ["ok.txt"]


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"epochs": "many"}', "{not json", '{"image_size": -5}'])
def test_resume_with_a_damaged_config_json_names_the_file(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(content)
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert code == 1 and len(err) == 1 and "config.json" in err[0] and "Traceback" not in err[0], err


def test_resume_with_a_damaged_state_names_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "run", *TINY, "--epochs", "1", "--out", out)[0] == 0
    state = torch.load(out / "state.pt", weights_only=True)
    for bad in ({**state, "head": {k: v[:1] for k, v in state["head"].items()}},  # wrong shapes
                {**state, "history": ["not a row"]},  # wrong types
                [1, 2]):  # not a state at all
        torch.save(bad, out / "state.pt")
        (out / "metrics.json").unlink(missing_ok=True)
        code, _, err = _cli(capsys, "run", "--resume", out, "--epochs", "2")
        assert code == 1 and len(err) == 1 and "state.pt" in err[0], err


def test_a_diverging_loss_stops_in_one_line_and_keeps_the_last_good_epoch(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8), torch.randint(0, 4, (64,))
    head = MLPHead(8, 4, hidden=(16,), standardize=False)
    loader = FeatureLoader(x, y, 16, train=True)
    history = engine.fit(head, loader, epochs=1, lr=1e-3)
    good = {k: v.clone() for k, v in head.state_dict().items()}
    opt = torch.optim.SGD(head.parameters(), lr=1e30)
    with pytest.raises(TrainingDiverged) as e:
        engine.fit(head, loader, epochs=3, optimizer=opt, history=history)
    assert "epoch 2" in str(e.value) and "--lr" in str(e.value)
    for k, v in head.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_cli_huge_lr_exits_1_without_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "run", *TINY, "--lr", "1e30", "--out", out)
    assert code == 1 and len(err) == 1 and "loss became" in err[0], err
    assert not (out / "metrics.json").exists()
    for name in runs.written_files(out) or []:
        if name.endswith(".json"):
            _strict(out / name)


def test_pipeline_run_returns_metrics_and_every_file_is_strict_json(tmp_path):
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32, train_size=100, test_size=100,
                             epochs=1, progress=False, data_root=str(tmp_path / "data"))
    m = pipeline.run(cfg, tmp_path / "run")
    assert m["epochs"] == 1 and 0 <= m["test_accuracy"] <= 1
    for name in ("metrics.json", "history.json", "config.json", runs.MARKER):
        _strict(tmp_path / "run" / name)
    with pytest.raises(CifarTLError):
        pipeline.run(cfg, tmp_path / "run", overwrite=False)


def test_the_tutorial_path_runs_the_backbone_with_the_chosen_precision(tmp_path, monkeypatch):
    """--no-cache: every training step's backbone runs through the resolved engine/precision."""
    from cifar_tl import engines

    seen = []
    real = engines.BackboneRunner.__call__

    def spy(self, x):
        seen.append((self.precision, len(x)))
        return real(self, x)

    monkeypatch.setattr(engines.BackboneRunner, "__call__", spy)
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32, train_size=100, test_size=100,
                             epochs=1, batch_size=10, cache=False, precision="bf16", engine="torch",
                             weights=None, progress=False, data_root=str(tmp_path / "data"))  # standardises
    m = pipeline.run(cfg, tmp_path / "run")
    assert (m["engine"], m["precision"]) == ("torch", "bf16")
    assert {p for p, _ in seen} == {"bf16"}
    # the statistics (100 images), 10 training steps, and the test split at least once
    assert sum(n for _, n in seen) >= 100 + 100 + 100


def _full_disk_for(monkeypatch, where):
    """torch.save fails as on a full disk (a RuntimeError with the OSError behind it) for files
    whose path contains ``where`` (the temp file's path, read back from its descriptor: Linux)."""
    import errno
    import os

    real = torch.save

    def save(obj, f, *a, **k):
        name = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
        if where in name:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as e:
                raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from e
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_for_out_is_one_line(tmp_path, capsys, monkeypatch):
    _full_disk_for(monkeypatch, str(tmp_path / "run"))
    code, _, err = _cli(capsys, "run", *TINY, "--out", tmp_path / "run", "--data-root", tmp_path / "data")
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and "state.pt" in err[0], err


def test_a_full_disk_for_the_cache_only_costs_time(tmp_path, capsys, monkeypatch):
    _full_disk_for(monkeypatch, str(tmp_path / "data" / "features"))
    code, out, err = _cli(capsys, "run", *TINY, "--out", tmp_path / "run", "--data-root", tmp_path / "data")
    assert code == 0, err
    assert "No space left on device" in out and "cache" in out
    assert _strict(tmp_path / "run" / "metrics.json")["epochs"] == 2


def test_both_paths_give_history_rows_of_the_same_shape(tmp_path):
    keys = []
    for cache in (True, False):
        cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32, train_size=200, test_size=100,
                                 epochs=1, cache=cache, progress=False, data_root=str(tmp_path / "data"))
        pipeline.run(cfg, tmp_path / f"run-{cache}")
        [row] = _strict(tmp_path / f"run-{cache}" / "history.json")
        keys.append(set(row))
    assert keys[0] == keys[1] and {"val_accuracy", "train_loss", "seconds"} <= keys[0]
