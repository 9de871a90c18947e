"""A run's folder is claimed while the run writes into it: a second run into it is refused in one
line and never mixes or deletes the first one's files; a damaged marker or lock is named, never a
traceback or a hang."""

import json
import os
import signal
import subprocess
import sys

import pytest

from cifar_tl import pipeline, runs
from cifar_tl.errors import CifarTLError

from .conftest import cli_in_process as _cli
from .conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "100",
        "--test-size", "100", "--epochs", "1", "--quiet")


def _files(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_folder_claimed_by_a_running_run_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    held = runs.claim(out, resume=False, overwrite=False)  # as a run that is still extracting
    for extra in ((), ("--overwrite",)):
        code, _, err = _cli(capsys, "run", *TINY, "--out", out, *extra)
        assert code == 1 and len(err) == 1 and "another run is writing to" in err[0], err
        assert f"pid {os.getpid()}" in err[0]
    assert {p.name for p in out.iterdir()} == {runs.LOCK}  # nothing written, nothing removed
    held.release()
    assert not out.exists()  # the claim made the folder and nothing was written: it is gone again
    assert _cli(capsys, "run", *TINY, "--out", out)[0] == 0
    assert not (out / runs.LOCK).exists() and (out / "metrics.json").is_file()


def test_a_run_that_finishes_meanwhile_is_not_deleted_by_the_one_still_extracting(tmp_path, capsys,
                                                                                  monkeypatch, tiny_cfg):
    """The case that lost data: run A is extracting when run B, into the same new folder, starts.
    B is refused at once, A finishes, and A's files are all there and agree with each other."""
    out = tmp_path / "run"
    second = {}
    make_loaders = pipeline.make_loaders

    def during_extraction(r):
        second["result"] = _cli(capsys, "run", *TINY, "--out", out)
        make_loaders(r)

    monkeypatch.setattr(pipeline, "make_loaders", during_extraction)
    metrics = pipeline.run(tiny_cfg.replace(epochs=1), out, overwrite=False)
    code, _, err = second["result"]
    assert code == 1 and len(err) == 1 and "another run is writing to" in err[0], err
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert json.loads((out / "config.json").read_text())["train_size"] == tiny_cfg.train_size
    assert {"head.pt", "state.pt", "history.json"} <= set(runs.written_files(out))
    assert not (out / runs.LOCK).exists()


def test_a_finished_run_survives_a_second_run_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "run", *TINY, "--out", out)[0] == 0
    before = _files(out)
    code, _, err = _cli(capsys, "run", *TINY, "--seed", "3", "--out", out)
    assert code == 1 and "already holds a run" in err[0]
    assert _files(out) == before


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_notice(tmp_path, capsys):
    out = tmp_path / "run"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir()
    (out / runs.LOCK).write_text(json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename,
                                             "token": "x", "started": "earlier"}))
    code, notices, err = _cli(capsys, "run", *TINY, "--out", out)
    assert code == 0 and "no longer running" in notices, err
    assert not (out / runs.LOCK).exists()


def test_two_processes_started_together_into_one_folder(tmp_path):
    """The real race: two `run`s into the same new --out. One finishes, the other is refused in
    one line (while the first runs, or because the folder then holds a run); nothing is mixed."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cifar_tl", "run", *TINY, "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=run_cli.__globals__["ROOT"]) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1).strip().splitlines()
    assert len(refused) == 1 and ("another run is writing to" in refused[0] or "already holds a run" in refused[0])
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert not (out / runs.LOCK).exists()


# --------------------------------------------------------------------------- damaged markers
@pytest.mark.parametrize("entry", ["..", ".", "sub", "a\0b", "fifo", "link"])
def test_a_marker_listing_what_is_not_a_regular_file_of_the_folder_is_left_alone(tmp_path, capsys, entry):
    out = tmp_path / "run"
    out.mkdir()
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("mine")
    os.mkfifo(out / "fifo")
    (tmp_path / "precious").write_text("x")
    (out / "link").symlink_to(tmp_path / "precious")
    (out / "old.txt").write_text("of the earlier run")
    (out / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT, "files": [entry, "old.txt"]}))
    code, _, err = _cli(capsys, "run", *TINY, "--out", out, "--overwrite")
    assert code == 0, err
    assert not (out / "old.txt").exists()  # the earlier run's regular file is replaced
    assert (out / "sub" / "keep.txt").read_text() == "mine" and (out / "fifo").exists()
    assert (out / "link").is_symlink() and (tmp_path / "precious").read_text() == "x"


class Hung(Exception):
    pass


@pytest.fixture
def no_hang():
    """A blocking read (of a FIFO) fails the test after 60 s instead of hanging it."""
    def alarm(*_):
        raise Hung("blocked for 60 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
@pytest.mark.parametrize("name", [runs.MARKER, runs.LOCK, "config.json", "metrics.json", "state.pt"])
def test_a_fifo_or_folder_in_place_of_a_run_file_neither_hangs_nor_tracebacks(tmp_path, capsys, no_hang,
                                                                              tiny_cfg, kind, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.MARKER).write_text(json.dumps({"format": runs.MARKER_FORMAT, "files": ["config.json"]}))
    (out / "config.json").write_text(json.dumps(tiny_cfg.replace(epochs=1).to_dict()))
    (out / "metrics.json").write_text("{}")
    (out / name).unlink(missing_ok=True)
    os.mkfifo(out / name) if kind == "fifo" else (out / name).mkdir()
    for args in (("run", *TINY, "--out", out), ("run", "--resume", out)):
        code, _, err = _cli(capsys, *args)  # an unexpected exception (or Hung) fails the test
        # Resuming a run with no state.pt trains it (only its metrics.json is odd); else one line.
        assert (code == 0 and name == "metrics.json") or (code in (1, 2) and len(err) == 1), (args, err)


# --------------------------------------------------------------------------- resuming with other data
@pytest.mark.parametrize("field, value", [("train_size", 50), ("source", "cifar100")])
def test_a_resume_with_other_data_is_refused(tmp_path, capsys, tiny_cfg, field, value):
    """The data role counts when a resume compares settings: a state.pt trained on other images
    (config.json says another train_size or source) cannot be continued, from the CLI or the API."""
    out = tmp_path / "run"
    pipeline.run(tiny_cfg.replace(epochs=1), out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, field: value}))
    code, _, err = _cli(capsys, "run", "--resume", out, "--epochs", "2")
    assert code == 1 and len(err) == 1 and "other settings" in err[0] and field in err[0], err
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CifarTLError, match=f"cannot resume .* other settings .*{field}"):
        pipeline.run(tiny_cfg.replace(epochs=2, **{field: value}), out, resume=True)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1  # nothing trained
