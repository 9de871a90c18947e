"""Reliability: foreign checkpoints, atomic saves, the feature cache, missing assets, reproducibility
and bad arguments. Each known case ends in a correct result or one clear line, never a traceback."""

import json
import os
import pathlib
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cifar_tl import checkpoint, inference, pipeline
from cifar_tl.config import Config
from cifar_tl.errors import CheckpointError
from cifar_tl.models import MLPHead

from .conftest import ONE_THREAD, ROOT, cli_in_process, damaged, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **kw):
    base = dict(backbone="resnet18", image_size=32, train_size=200, test_size=100, epochs=2,
                data_root=str(tmp_path / "data"), progress=False)
    return Config.for_profile("smoke", **{**base, **kw})


def _cli(capsys, *argv):
    code, _, err = cli_in_process(capsys, *argv)
    return code, err


def _one_line(err):
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _tiny_head_file(path, **cfg_changes):
    torch.manual_seed(0)
    head = MLPHead(512, 100, hidden=(16, 16))
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32).replace(**cfg_changes)
    return checkpoint.save_head(path, head, config=cfg, class_names=[f"c{i}" for i in range(100)])


# --------------------------------------------------------------------------- foreign checkpoints
class TouchOnLoad:
    """Unpickling this creates a file: proof that code in a checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class ShellOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payloads(tmp_path):
    """Files that run code when unpickled: (file, marker it would create)."""
    files = []
    for name, cls in (("touch", TouchOnLoad), ("shell", ShellOnLoad)):
        marker = tmp_path / f"{name}.ran"
        path = tmp_path / f"{name}.pt"
        torch.save({"format": checkpoint.FORMAT, "format_version": 1, "state_dict": cls(marker)}, path)
        files.append((path, marker))
    return files


def test_the_payloads_would_run_without_weights_only(tmp_path):
    """The control: a plain pickle load runs the payloads, so the tests below can fail."""
    for path, marker in _payloads(tmp_path):
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_code_in_a_checkpoint_never_runs_in_the_library(tmp_path):
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(3, 2), module)  # the tutorial's pickled module
    for path, marker in _payloads(tmp_path):
        for load in (checkpoint.read_checkpoint, checkpoint.load_head, inference.load_model):
            with pytest.raises(CheckpointError, match="refused") as e:
                load(path)
            assert "nothing in it was run" in str(e.value) and "\n" not in str(e.value)
        assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refused: .*torch\.nn\.modules\.linear\.Linear"):
        checkpoint.read_checkpoint(module)


def test_code_in_a_checkpoint_never_runs_from_the_cli(tmp_path, capsys):
    (touch, marker1), (shell, marker2) = _payloads(tmp_path)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    for cmd in (["evaluate", "--checkpoint", touch], ["predict", "--checkpoint", touch, image],
                ["evaluate", "--checkpoint", shell]):
        code, err = _cli(capsys, *cmd)
        assert code == 1 and "refused" in _one_line(err) and str(cmd[2]) in err[0], (cmd, err)
    # And once as a user runs it, in a process of its own.
    proc = run_cli("predict", "--checkpoint", shell, image, env=ONE_THREAD, timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc.stderr.strip().splitlines())
    assert line.startswith("error: ") and "refused" in line and str(shell) in line
    assert not marker1.exists() and not marker2.exists()


def test_a_checkpoint_for_another_model_is_refused_saying_what_differs(tmp_path, capsys):
    path = _tiny_head_file(tmp_path / "head.pt")
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_head(path, backbone="resnet18", image_size=64, feature_dim=1280, weights="imagenet")
    msg = str(e.value)
    for needle in ("image_size: checkpoint has 32, expected 64", "feature_dim: checkpoint has 512, expected 1280",
                   "weights: checkpoint has 'synthetic', expected 'imagenet'"):
        assert needle in msg, msg
    assert "backbone" not in msg
    # The CLI: evaluate takes the model from the checkpoint; an override that contradicts it is refused.
    code, err = _cli(capsys, "evaluate", "--checkpoint", path, "--image-size", 48, "--quiet")
    assert code == 1 and "image_size: checkpoint has 32, expected 48" in _one_line(err)


def test_a_checkpoint_for_another_class_count_is_refused(tmp_path, capsys):
    from PIL import Image

    for c in ("cat", "dog", "owl"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "photos" / c / f"{i}.png")
    path = _tiny_head_file(tmp_path / "head.pt")
    code, err = _cli(capsys, "evaluate", "--checkpoint", path, "--source", f"folder:{tmp_path / 'photos'}", "--quiet")
    # classes are matched by name: none of the three is one of the head's 100
    assert code == 1 and "does not know 3 class(es) of folder:" in _one_line(err) and "'cat', 'dog', 'owl'" in err[0]


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 1), st.integers(0, 255), st.booleans())
def test_a_damaged_checkpoint_is_a_checkpoint_error(where, byte, truncate):
    """Any cut or flipped byte: CheckpointError or a checkpoint that passed every check, nothing else."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        good = _tiny_head_file(pathlib.Path(tmp) / "head.pt")
        bad = pathlib.Path(tmp) / "bad.pt"
        bad.write_bytes(damaged(good.read_bytes(), where, byte, truncate))
        try:
            head, meta = checkpoint.load_head(bad)
        except CheckpointError as e:
            assert "\n" not in str(e) and "bad.pt" in str(e)
        else:
            assert meta["format"] == checkpoint.FORMAT and isinstance(head, MLPHead)


def test_silently_changed_weights_are_caught_by_the_checksum(tmp_path):
    """torch's zip reader skips CRCs: a flipped bit in a copied file would load as wrong weights."""
    path = _tiny_head_file(tmp_path / "head.pt")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["0.weight"][0, 0] += 1e-3
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        checkpoint.load_head(path)


def test_damaged_or_missing_checkpoint_files_from_the_cli(tmp_path, capsys):
    good = _tiny_head_file(tmp_path / "head.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    empty = tmp_path / "empty.pt"
    empty.touch()
    for path, needle in ((cut, "truncated"), (text, "truncated"), (empty, "empty"),
                         (tmp_path / "missing.pt", "no such"), (tmp_path, "is a directory")):
        for cmd in (["evaluate", "--checkpoint", path], ["predict", "--checkpoint", path, "x.png"]):
            code, err = _cli(capsys, *cmd)
            assert code == 1 and needle in _one_line(err) and str(path) in err[0], (cmd, err)


# --------------------------------------------------------------------------- atomic saves
SAVER = r"""
import os, sys, torch
from cifar_tl import checkpoint
from cifar_tl.config import Config
from cifar_tl.models import MLPHead
path, cfg = sys.argv[1], Config(backbone="resnet18", image_size=32, weights=None)
for _ in sys.stdin:  # one line per round: fork a process that saves for ever; report its pid
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        head = MLPHead(2048, 1000, hidden=(2048, 2048))  # 10.5 M parameters, a 42 MB file
        i = 0
        while True:
            i += 1
            with torch.no_grad():
                for p in head.parameters():
                    p.fill_(i)  # every tensor holds i: a file mixing two saves would show
            checkpoint.save_head(path, head, config=cfg, class_names=list(map(str, range(1000))),
                                 metrics={"i": i})
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the saver is forked (POSIX)")
def test_kill_9_while_saving_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "head.pt"
    server = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=ROOT, text=True,
                              env={**os.environ, **ONE_THREAD}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    temps_seen, rng = 0, random.Random()
    try:
        for _ in range(5):
            before = path.stat().st_mtime_ns if path.exists() else 0
            server.stdin.write("go\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            deadline = time.time() + 60
            while (path.stat().st_mtime_ns if path.exists() else 0) == before:  # one whole save first
                assert time.time() < deadline
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.3))
            os.kill(pid, signal.SIGKILL)
            assert server.stdout.readline().strip() == "reaped"
            blob = checkpoint.read_checkpoint(path)  # always loads ...
            i = blob["metrics"]["i"]
            params = [v for k, v in blob["state_dict"].items() if not k.startswith("0.")]
            assert all(bool((v == i).all()) for v in params)  # ... and is one save, not a mix
            temps = list(tmp_path.glob(".head.pt.*.tmp"))
            assert len(temps) <= 1, temps  # earlier crashes' temps were cleaned by later saves
            temps_seen += len(temps)
    finally:
        server.kill()
        server.wait()
    assert temps_seen >= 1  # some kill landed mid-write: the test exercised what it claims
    checkpoint.save_head(path, MLPHead(8, 2, hidden=(4,)), config=Config(), class_names=["a", "b"])
    assert list(tmp_path.glob(".*.tmp")) == []  # a successful save removes a dead writer's temp


def test_saved_files_get_the_usual_permissions(tmp_path):
    """mkstemp's 0600 would hide a shared head.pt from classmates on the same machine."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = _tiny_head_file(tmp_path / "head.pt")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# --------------------------------------------------------------------------- the feature cache
def _cache_files(data_root):
    return sorted((pathlib.Path(data_root) / "features").glob("*.pt"))


def test_a_damaged_or_mismatched_cache_is_rebuilt_with_a_notice(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    first = pipeline.run(cfg, tmp_path / "a")
    train_file, test_file = (pathlib.Path(first["cache"][s]["path"]) for s in ("train", "test"))
    capsys.readouterr()
    train_file.write_bytes(train_file.read_bytes()[:1000])  # truncated
    test_file.write_bytes(b"")  # emptied
    again = pipeline.run(cfg, tmp_path / "b")
    notices = [line for line in capsys.readouterr().out.splitlines() if "feature cache" in line]
    assert len(notices) == 2 and all("rebuilding" in line for line in notices), notices
    assert again["test_accuracy"] == first["test_accuracy"]
    assert not again["cache"]["train"]["hit"] and not again["cache"]["test"]["hit"]
    # A whole file with another key (the test split's features under the train split's name).
    shutil.copy(test_file, train_file)
    third = pipeline.run(cfg, tmp_path / "c")
    notices = [line for line in capsys.readouterr().out.splitlines() if "feature cache" in line]
    assert len(notices) == 1 and "rebuilding" in notices[0] and str(train_file) in notices[0]
    assert third["test_accuracy"] == first["test_accuracy"] and third["cache"]["test"]["hit"]
    for f in _cache_files(cfg.data_root):
        assert "features" in torch.load(f, weights_only=True)


def test_two_runs_writing_the_same_cache_at_once(tmp_path):
    env = {**os.environ, **ONE_THREAD, "CIFAR_TL_DATA": str(tmp_path / "data")}
    args = ["run", "--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "300",
            "--test-size", "100", "--epochs", "2", "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "cifar_tl", *args, "--out", str(tmp_path / f"r{i}")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    metrics = [json.loads((tmp_path / f"r{i}" / "metrics.json").read_text()) for i in range(2)]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]
    files = _cache_files(tmp_path / "data")
    assert len(files) == 3 and not list((tmp_path / "data" / "features").glob(".*"))  # train, val, test
    for f in files:
        blob = torch.load(f, weights_only=True)
        assert blob["features"].shape[0] in (270, 30, 100)  # train, val (10% of 300), test


# --------------------------------------------------------------------------- missing assets
def test_missing_imagenet_weights_offline_is_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    home = tmp_path / "empty-torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    out = tmp_path / "out"
    code, err = _cli(capsys, "run", "--profile", "smoke", "--source", "synthetic", "--weights", "imagenet",
                     "--backbone", "resnet18", "--image-size", "32", "--train-size", "100", "--test-size", "100",
                     "--out", out)
    line = _one_line(err)
    assert code == 1 and "ImageNet weights for resnet18" in line and str(home) in line
    assert "python -m cifar_tl download" in line and "--profile smoke" in line
    assert not out.exists()  # a run that failed before writing anything leaves no empty folder


def test_a_data_root_that_cannot_be_written(tmp_path, capsys):
    """Tests run as root, so chmod cannot make a folder read-only: a path under a regular file can't
    be created by anyone (NotADirectoryError), which is what a read-only share looks like to us."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    root = blocker / "sub"
    code, err = _cli(capsys, "run", "--profile", "cpu", "--data-root", root, "--out", tmp_path / "o")
    line = _one_line(err)
    assert code == 1 and "CIFAR-100 is not in" in line and "cannot be written" in line
    assert "CIFAR_TL_DATA" in line and "python -m cifar_tl download" in line and "--profile smoke" in line
    code, err = _cli(capsys, "download", "--root", root)
    assert code == 1 and "cannot be written" in _one_line(err)
    # smoke needs no dataset: it runs, and says once per split (train, val, test) that it could not
    # cache the features.
    metrics = pipeline.run(_cfg(tmp_path, data_root=str(root), epochs=1), tmp_path / "smoke")
    notices = [line for line in capsys.readouterr().out.splitlines() if "feature cache" in line]
    assert metrics["n_test"] == 100 and len(notices) == 3 and "CIFAR_TL_DATA" in notices[0]


# --------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("cache", [True, False], ids=["cached features", "tutorial path"])
def test_the_same_seed_gives_bit_identical_results(cache, tmp_path):
    """Two runs in one process (so the seed, not a fresh process, must reset every RNG), each
    extracting its own features: the same accuracies and bit-identical head weights."""
    kw = dict(cache=cache, epochs=2 if cache else 1, train_size=200 if cache else 100)
    runs = []
    for name in ("a", "b"):
        torch.rand(7)  # disturb the global RNG between the runs
        cfg = _cfg(tmp_path / name, **kw)
        m = pipeline.run(cfg, tmp_path / name / "out")
        runs.append((m, torch.load(tmp_path / name / "out" / "head.pt", weights_only=True)))
    (m1, h1), (m2, h2) = runs
    assert (m1["test_accuracy"], m1["test_top5"], m1["test_loss"]) == (m2["test_accuracy"], m2["test_top5"],
                                                                      m2["test_loss"])
    assert h1["state_dict"].keys() == h2["state_dict"].keys()
    assert all(torch.equal(h1["state_dict"][k], h2["state_dict"][k]) for k in h1["state_dict"])
    other = pipeline.run(_cfg(tmp_path / "c", seed=1, **kw), tmp_path / "c" / "out")  # the control
    h3 = torch.load(tmp_path / "c" / "out" / "head.pt", weights_only=True)
    first = next(k for k in h1["state_dict"] if k.endswith("weight"))
    assert not torch.equal(h1["state_dict"][first], h3["state_dict"][first]) and other


def test_evaluate_and_predict_rebuild_the_random_backbone_the_head_was_trained_on(tmp_path, capsys):
    """A smoke head sits on a random backbone: evaluate must rebuild that very backbone (from the
    run's seed) to reproduce the run's accuracy, and a backbone that differs is refused."""
    cfg = _cfg(tmp_path, epochs=3)
    m = pipeline.run(cfg, tmp_path / "run")
    torch.manual_seed(12345)  # whatever the global RNG holds
    code, out, _ = cli_in_process(capsys, "evaluate", "--checkpoint", tmp_path / "run" / "head.pt", "--quiet",
                             "--data-root", cfg.data_root)
    assert code == 0 and f"test accuracy {m['test_accuracy']:.4f}" in out
    blob = torch.load(tmp_path / "run" / "head.pt", weights_only=True)
    blob["backbone_fingerprint"] = "0" * 24  # as if made by a torch that initialises differently
    torch.save(checkpoint.with_checksum(blob), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not the one this head was trained on"):
        inference.load_model(tmp_path / "other.pt")


# --------------------------------------------------------------------------- arguments
@pytest.fixture
def finished_run(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    pipeline.run(cfg, tmp_path / "done")
    return tmp_path / "done", cfg


def test_evaluate_and_predict_argument_errors(finished_run, capsys, monkeypatch):
    out, cfg = finished_run
    head = out / "head.pt"
    for argv, code, needle in [
        (["evaluate", "--checkpoint", head, "--image-size", "0"], 2, "image-size"),
        (["evaluate", "--checkpoint", head, "--test-size", "-5"], 2, "test-size"),
        (["evaluate", "--checkpoint", head, "--profile", "bogus"], 2, "profile"),
        (["evaluate", "--checkpoint", head, "--source", "mnist"], 2, "unknown source"),
        (["evaluate"], 2, "--checkpoint"),
        (["evaluate", "--checkpoint", out / "nothing.pt"], 1, "no such"),
        (["predict", "--checkpoint", out / "nothing.pt", "x.png"], 1, "no such"),
        (["predict", "--checkpoint", head], 2, "IMAGE"),
    ]:
        got, err = _cli(capsys, *argv)
        assert got == code and needle in _one_line(err), (argv, err)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["evaluate", "--checkpoint", head, "--device", "cuda", "--data-root", cfg.data_root],
                 ["predict", "--checkpoint", head, "--device", "cuda", "x.png"],
                 ["run", "--profile", "smoke", "--device", "cuda", "--out", out.parent / "gpu"]):
        code, err = _cli(capsys, *argv)
        assert code == 2 and "no CUDA GPU" in _one_line(err), (argv, err)
    assert not (out.parent / "gpu").exists()


def test_run_argument_errors(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CIFAR_TL_PROFILE", "bogus")
    code, err = _cli(capsys, "run", "--out", tmp_path / "x")
    assert code == 2 and "unknown profile 'bogus'" in _one_line(err) and "CIFAR_TL_PROFILE" in err[0]
    monkeypatch.delenv("CIFAR_TL_PROFILE")
    for extra, code_, needle in [(["--lr", "0"], 2, "lr"), (["--lr", "nan"], 2, "lr"), (["--seed", "-1"], 2, "seed"),
                                 (["--out", blocker], 1, "is a file"),
                                 (["--out", blocker / "sub"], 1, "cannot write to")]:
        argv = ["run", "--profile", "smoke", *(["--out", tmp_path / "y"] if "--out" not in extra else []), *extra]
        code, err = _cli(capsys, *argv)
        assert code == code_ and needle in _one_line(err), (extra, err)
    assert not (tmp_path / "y").exists()


def test_resume_errors_and_reusing_an_out_folder(finished_run, tmp_path, capsys):
    out, cfg = finished_run
    settings_ = ["--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
                 "--test-size", "100", "--epochs", "1", "--data-root", cfg.data_root, "--quiet"]
    cases = [
        (["run", "--resume", tmp_path / "never-ran"], 1, "no config.json"),
        (["run", "--resume", out], 1, "already finished all 1 epochs"),
        (["run", "--resume", out, "--image-size", "64"], 2, "drop --image-size"),
        (["run", *settings_, "--out", out], 1, "already holds a run"),
    ]
    for argv, code, needle in cases:
        got, err = _cli(capsys, *argv)
        assert got == code and needle in _one_line(err), (argv, err)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1  # untouched
    assert _cli(capsys, "run", *settings_, "--out", out, "--overwrite")[0] == 0
    # A finished run trains longer with --epochs; fewer epochs than done is refused.
    assert _cli(capsys, "run", "--resume", out, "--epochs", "2", "--quiet")[0] == 0
    assert len(json.loads((out / "history.json").read_text())) == 2
    got, err = _cli(capsys, "run", "--resume", out, "--epochs", "1")
    assert got == 2 and "already trained 2 epochs" in _one_line(err)
    # A damaged state.pt is one line that says what to do.
    (out / "state.pt").write_bytes((out / "state.pt").read_bytes()[:300])
    got, err = _cli(capsys, "run", "--resume", out, "--epochs", "3")
    assert got == 1 and "state.pt" in _one_line(err) and "delete" in err[0]


def test_out_of_memory_is_one_line_that_says_what_to_lower(tmp_path, capsys, monkeypatch):
    from cifar_tl import features

    def extract(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB ...\nmore lines")

    monkeypatch.setattr(features, "extract", extract)
    code, err = _cli(capsys, "run", "--profile", "smoke", "--backbone", "resnet18", "--image-size", "32",
                     "--train-size", "100", "--test-size", "100", "--data-root", tmp_path / "data",
                     "--out", tmp_path / "out")
    line = _one_line(err)
    assert code == 1 and "out of memory on cpu while extracting features" in line and "--image-size" in line
