"""Interruptions: Ctrl-C, a kernel interrupt or SIGTERM keeps every completed epoch, and --resume
ends bit-identical (on the CPU) to a run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from cifar_tl import engine, pipeline, runs
from cifar_tl.config import Config
from cifar_tl.errors import Interrupted

from .conftest import ONE_THREAD, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")
# Small enough to be quick, with enough epochs (~50 ms each) that a signal lands mid-run.
RUN = ["run", "--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
       "--test-size", "100", "--batch-size", "8", "--epochs", "40", "--weights", "none", "--quiet"]  # standardises


def _default_sigint():
    """A shell starting pytest in the background makes SIGINT ignored, and children inherit that:
    give the run the terminal's default, where Ctrl-C raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args, data_root, text=True):
    env = {**os.environ, **ONE_THREAD, "CIFAR_TL_DATA": str(data_root)}
    return subprocess.Popen([sys.executable, "-m", "cifar_tl", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                            preexec_fn=_default_sigint)


def _epochs_done(out) -> int:
    try:
        return len(json.loads((out / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


def _head(out):
    return torch.load(out / "head.pt", weights_only=True)["state_dict"]


def _history(out):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((out / "history.json").read_text())]


def test_sigterm_and_sigint_during_a_real_run_then_resume_equal_an_uninterrupted_run(tmp_path):
    ref_out = tmp_path / "uninterrupted"
    reference = _start(*RUN, "--out", ref_out, data_root=tmp_path / "data-ref")
    runs = {sig: (tmp_path / sig.name, _start(*RUN, "--out", tmp_path / sig.name, data_root=tmp_path / sig.name))
            for sig in (signal.SIGTERM, signal.SIGINT)}
    rng, waiting, deadline = random.Random(), dict(runs), time.time() + 240
    while waiting:  # signal each run soon after its first epoch is on disk
        for sig, (out, proc) in list(waiting.items()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            if _epochs_done(out) >= 1:
                time.sleep(rng.uniform(0, 0.05))  # anywhere in an epoch, or while its files are written
                proc.send_signal(sig)
                del waiting[sig]
        time.sleep(0.005)
    mid_training = 0
    for sig, (out, proc) in runs.items():
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, (sig, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"python -m cifar_tl run --resume {out}" in lines[0]
        done = _epochs_done(out)
        if done < 40:
            assert f"interrupted after {done} of 40 epoch(s)" in lines[0], (done, err)
            mid_training += 1
        else:  # a busy machine can be that slow to deliver: then it stopped in the final evaluation
            assert "interrupted after all 40 epochs, during the final evaluation" in lines[0], err
        # What resume needs is on disk, loadable with weights_only=True: head (standardiser
        # buffers included), Adam's state for every parameter, and the history.
        state = torch.load(out / "state.pt", weights_only=True)
        assert len(state["history"]) == done and {"0.mean", "0.std"} <= set(state["head"])
        adam = state["optimizer"]["state"]
        assert len(adam) == 6 and all({"step", "exp_avg", "exp_avg_sq"} <= set(s) for s in adam.values())
        assert all(float(s["step"]) == done * (180 // 8) for s in adam.values())  # 20 of 200 validate
        assert not (out / "metrics.json").exists()
    assert mid_training >= 1
    _, err = reference.communicate(timeout=240)
    assert reference.returncode == 0, err
    resumed = {sig: _start("run", "--resume", out, "--quiet", data_root=tmp_path / sig.name)
               for sig, (out, _) in runs.items()}
    for sig, proc in resumed.items():
        stdout, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        out = runs[sig][0]
        assert "resuming after epoch" in stdout
        ref, head = _head(ref_out), _head(out)
        assert ref.keys() == head.keys() and all(torch.equal(ref[k], head[k]) for k in ref), sig
        assert _history(out) == _history(ref_out)
        got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, ref_out))
        assert (got["test_accuracy"], got["test_loss"], got["epochs"]) == (want["test_accuracy"],
                                                                          want["test_loss"], 40)


def test_ctrl_c_during_feature_extraction_is_one_line_and_keeps_the_cache_whole(tmp_path):
    data_root, out = tmp_path / "data", tmp_path / "run"
    args = ["run", "--profile", "smoke", "--backbone", "resnet18", "--image-size", "64", "--train-size", "100",
            "--test-size", "600", "--epochs", "1", "--out", out]
    proc = _start(*args, data_root=data_root, text=False)  # progress bars on: they say which split
    seen = bytearray()
    reader = threading.Thread(target=lambda: [seen.extend(c) for c in iter(lambda: proc.stdout.read1(4096), b"")])
    reader.start()
    deadline = time.time() + 240
    while b"extract test" not in seen:  # the train split is cached; the test split is being extracted
        assert proc.poll() is None and time.time() < deadline, bytes(seen)
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    reader.join()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted while extracting features" in lines[0] and "run the same command again" in lines[0]
    cache = data_root / "features"
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp file left
    (train_file,) = list(cache.glob("*.pt"))  # the finished split's features, whole
    assert torch.load(train_file, weights_only=True)["features"].shape[:2] == (100, 2)
    assert not out.exists()  # nothing was trained: no half-made run folder
    # The same command again uses the cached split and extracts only the other one.
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=64, train_size=100, test_size=600,
                             epochs=1, data_root=str(data_root), progress=False)
    metrics = pipeline.run(cfg, out)
    assert metrics["cache"]["train"]["hit"] and not metrics["cache"]["test"]["hit"]


# --------------------------------------------------------------------------- in the library
def _cfg(tmp_path, **kw):
    base = dict(backbone="resnet18", image_size=32, train_size=200, test_size=100, epochs=3,
                data_root=str(tmp_path / "data"), progress=False)
    return Config.for_profile("smoke", **{**base, **kw})


def _interrupt_epoch(monkeypatch, epoch: int, after_batches: int = 2):
    """Make epoch ``epoch`` (1-based) raise KeyboardInterrupt after a few optimizer steps, as a
    kernel interrupt would."""
    original, calls = engine.train_one_epoch, []

    def train_one_epoch(model, loader, *args, **kwargs):
        calls.append(1)
        if len(calls) != epoch:
            return original(model, loader, *args, **kwargs)

        def cut():
            for i, batch in enumerate(loader):
                if i == after_batches:
                    raise KeyboardInterrupt
                yield batch
        return original(model, cut(), *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)


@pytest.mark.parametrize("cache", [True, False], ids=["cached features", "tutorial path"])
def test_a_kernel_interrupt_then_resume_is_bit_identical(cache, tmp_path, monkeypatch):
    """The tutorial path too: its shuffle and random flips depend only on (seed, epoch)."""
    cfg = _cfg(tmp_path, cache=cache, epochs=3 if cache else 2)
    reference = pipeline.run(cfg, tmp_path / "ref")
    with monkeypatch.context() as m:
        _interrupt_epoch(m, epoch=2)
        with pytest.raises(Interrupted, match=r"interrupted after 1 of \d epoch\(s\).*--resume"):
            pipeline.run(cfg, tmp_path / "cut")
    assert _epochs_done(tmp_path / "cut") == 1
    metrics = pipeline.run(None, tmp_path / "cut", resume=True)
    ref, head = _head(tmp_path / "ref"), _head(tmp_path / "cut")
    assert all(torch.equal(ref[k], head[k]) for k in ref)
    assert metrics["test_accuracy"] == reference["test_accuracy"]
    assert _history(tmp_path / "cut") == _history(tmp_path / "ref")


def test_an_interrupt_in_the_final_evaluation_resumes_to_the_end(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, epochs=2)
    original, calls = engine.evaluate, []

    def evaluate(*args, **kwargs):  # fit validates after each of the 2 epochs; the 3rd call is the final test
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(engine, "evaluate", evaluate)
        with pytest.raises(Interrupted, match="after all 2 epochs, during the final evaluation.*--resume"):
            pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists() and _epochs_done(tmp_path / "run") == 2
    metrics = pipeline.run(None, tmp_path / "run", resume=True)
    assert metrics["epochs"] == 2 and (tmp_path / "run" / "metrics.json").is_file()


def test_fit_keeps_the_last_completed_epoch_on_an_interrupt():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    batches = list(zip(x.split(8), y.split(8)))

    class Loader:
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return len(batches)

        def __iter__(self):
            for i, b in enumerate(batches):
                if self.epoch == 1 and i == 3:
                    raise KeyboardInterrupt
                yield b

    model = torch.nn.Linear(8, 3)
    snapshots = []
    hist = engine.fit(model, Loader(), epochs=3, progress=False,
                      on_epoch_end=lambda row, m, opt: snapshots.append(
                          ({k: v.clone() for k, v in m.state_dict().items()}, opt.state_dict()["state"][0]["step"].clone())))
    assert [r["epoch"] for r in hist] == [1]
    assert all(torch.equal(v, snapshots[0][0][k]) for k, v in model.state_dict().items())  # 3 steps undone


def test_signals_are_held_while_an_epoch_is_written():
    """A Ctrl-C or SIGTERM while head.pt, state.pt and history.json are written waits until all
    three describe the same epoch, then arrives as usual."""
    def sigterm(*_):
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, sigterm),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            finished = False
            with pytest.raises(KeyboardInterrupt):
                with runs.signals_deferred():
                    os.kill(os.getpid(), sig)
                    time.sleep(0.05)  # the signal has arrived, and is held
                    finished = True
            assert finished
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is sigterm
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
