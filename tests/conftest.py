"""Shared fixtures: everything offline, on the CPU, with synthetic data and random or synthetic weights."""

import cifar_tl  # noqa: F401, I001  (first: its thread settings reach OpenMP before torch loads)
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_tl import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def session_torch_home(tmp_path_factory):
    """The session's TORCH_HOME, holding the smoke profile's synthetic weights (``--weights
    synthetic``), built before the first test so that no test (a timed interrupt, a subprocess)
    pays for the pretraining. Built once per machine: they are kept beside pytest's numbered temp
    folders (``pytest-of-USER/cifar_tl-torch``, which pytest does not clean) and copied in."""
    base = tmp_path_factory.getbasetemp()
    home = base / "torch"
    kept = base.parent / "cifar_tl-torch" if re.fullmatch(r"pytest-\d+", base.name) else home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(kept))
        from cifar_tl import pretrain
        from cifar_tl.backbones import build_backbone

        build_backbone("resnet18", "synthetic")
        built = pretrain.cached_file("resnet18")
    if kept != home:
        (home / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, home / "hub" / "checkpoints" / built.name)
    # For the whole session, module-scoped fixtures included (they run before _offline_env): a
    # fixture that built the weights again elsewhere, on another thread count, got other weights.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory, monkeypatch, session_torch_home):
    """No test may touch the user's caches: data and torch hub go to a session temp folder (the
    synthetic weights are there already)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("CIFAR_TL_DATA", str(base / "data"))
    monkeypatch.setenv("TORCH_HOME", str(session_torch_home))


# Subprocesses on one thread: quick, and the same floating-point math in every process under any load.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def one_thread():
    """This process on one thread: a tiny head trains ~50x slower with 2 spinning threads on a busy
    2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    """A seconds-scale config: resnet18 (the smoke profile's synthetic weights) at 32 px on 200 synthetic images."""
    return Config.for_profile("smoke", backbone="resnet18", image_size=32, train_size=200,
                              test_size=100, epochs=2, data_root=str(tmp_path / "data"),
                              progress=False)


def damaged(content: bytes, where: float, byte: int, truncate: bool) -> bytes:
    """content cut at the fraction ``where`` of its length, or with the byte there set to ``byte``."""
    content = bytearray(content)
    k = int(where * (len(content) - 1))
    if truncate:
        return bytes(content[:k])
    content[k] = byte
    return bytes(content)


def cli_in_process(capsys, *argv):
    """The CLI in this process: (exit code, stdout, stderr lines). An unexpected exception fails the test."""
    from cifar_tl import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def run_cli(*args, env=None, timeout=600):
    """python -m cifar_tl ... in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cifar_tl", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, session_torch_home):
    """One real `run --profile smoke` for the whole session (the README's offline job), on the
    session's synthetic weights."""
    base = tmp_path_factory.mktemp("smoke")
    out = base / "run"
    env = {"CIFAR_TL_DATA": str(base / "data"), "TORCH_HOME": str(session_torch_home)}
    proc = run_cli("run", "--profile", "smoke", "--out", out, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    return out, env, proc


torch.set_num_threads(min(2, torch.get_num_threads()))
