"""How torch's CPU threads wait: the defaults set before torch loads (by `import cifar_tl` and the
CLI), never over the user's own, and the library loops under the one policy (cifar_tl/threads.py)."""

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from cifar_tl import engine, features, finetune, threads, widgets
from cifar_tl.models import MLPHead, build_backbone

from .conftest import ROOT

WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
(SPIN,) = threads.DEFAULTS.values()


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process whose environment has none of WAIT_VARS but ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**base, "PYTHONPATH": str(ROOT), **env}, check=False)


REPORT = ("import os, sys, cifar_tl; "
          "print(cifar_tl.threads.status, os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")


def test_import_sets_the_spin_count_before_torch_loads():
    done = _python(REPORT + "; print('torch' in sys.modules)")
    assert done.stdout.split() == ["set", SPIN, "None", "False"], done.stderr


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "777"}, {"OMP_WAIT_POLICY": "ACTIVE"},
                                 {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_import_keeps_the_users_own_choice(env):
    done = _python(REPORT, **env)
    expected = ["user", env.get("GOMP_SPINCOUNT", "None"), env.get("OMP_WAIT_POLICY", "None")]
    assert done.stdout.split() == expected, done.stderr


def test_import_after_torch_sets_nothing():
    done = _python("import torch; " + REPORT)
    assert done.stdout.split() == ["late", "None", "None"], done.stderr


def _libgomp_spin(stderr: str) -> str:
    """The spin count GNU OpenMP itself read when torch loaded it (OMP_DISPLAY_ENV=VERBOSE)."""
    lines = [line for line in stderr.splitlines() if line.strip().startswith("GOMP_SPINCOUNT =")]
    assert lines, stderr[-2000:]
    return lines[0].split("=", 1)[1].strip().strip("'")


@pytest.mark.parametrize("user", [None, "777"])
def test_the_cli_process_runs_torch_with_the_defaults(user):
    env = {"OMP_DISPLAY_ENV": "VERBOSE", **({"GOMP_SPINCOUNT": user} if user else {})}
    done = subprocess.run([sys.executable, "-m", "cifar_tl", "--help"], capture_output=True, text=True,
                          timeout=600, check=False, env={**{k: v for k, v in os.environ.items() if k not in WAIT_VARS},
                                                         "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr
    assert _libgomp_spin(done.stderr) == (user or SPIN)


# --------------------------------------------------------------------------- the library's loops
@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _features(n=64, d=16, classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_a_head_trains_on_one_thread_then_all_come_back(two_threads):
    f, y = _features()
    seen = []
    engine.fit(MLPHead(16, 4, hidden=(8,)), features.FeatureLoader(f, y, 8, train=True),
               features.FeatureLoader(f, y, 32, train=False), epochs=2, progress=False,
               on_epoch_end=lambda *_: seen.append(torch.get_num_threads()))
    assert seen == [1, 1] and torch.get_num_threads() == 2


def test_the_widgets_head_trains_on_one_thread(two_threads):
    seen = []
    widgets.train_head(_features(), _features(32), hidden=8, depth=1, epochs=1,
                       on_epoch_end=lambda *_: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == 2


def _convnet():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _images(n=16):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8),
                                                                      torch.randint(0, 3, (n,))), batch_size=8)


@contextmanager
def _late(monkeypatch, status="late"):
    """As if torch had been imported before cifar_tl (or as ``status``), with no warning given yet."""
    monkeypatch.setattr(threads, "status", status)
    monkeypatch.setattr(threads, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _late_warnings(caught) -> list:
    return [w for w in caught if "imported before cifar_tl" in str(w.message)]


def test_a_backbone_keeps_all_threads_and_warns_once_when_torch_came_first(monkeypatch, two_threads):
    seen = []
    with _late(monkeypatch) as caught:
        for _ in range(2):
            engine.fit(_convnet(), _images(), epochs=1, progress=False,
                       on_epoch_end=lambda *_: seen.append(torch.get_num_threads()))
    assert seen == [2, 2]
    assert len(_late_warnings(caught)) == 1 and issubclass(caught[0].category, RuntimeWarning)
    assert "import cifar_tl" in str(caught[0].message) and f"GOMP_SPINCOUNT={SPIN}" in str(caught[0].message)


@pytest.mark.parametrize("status", ["set", "user"])
def test_no_warning_when_the_defaults_or_the_users_choice_reached_openmp(monkeypatch, two_threads, status):
    with _late(monkeypatch, status) as caught:
        engine.fit(_convnet(), _images(), epochs=1, progress=False)
    assert not _late_warnings(caught)


def test_no_warning_for_a_head_or_on_one_thread(monkeypatch, two_threads):
    f, y = _features()
    with _late(monkeypatch) as caught:
        engine.fit(MLPHead(16, 4, hidden=(8,)), features.FeatureLoader(f, y, 8, train=True), progress=False)
        torch.set_num_threads(1)
        engine.fit(_convnet(), _images(), epochs=1, progress=False)
    assert not _late_warnings(caught)


def test_extraction_warns_when_torch_came_first(monkeypatch, two_threads):
    backbone = build_backbone("resnet18", weights=None)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with _late(monkeypatch) as caught:
        out = features.extract(backbone, images, 32, "cpu", progress=False)
    assert out.shape[:2] == (2, 2) and len(_late_warnings(caught)) == 1


class _Reached(Exception):
    pass


def test_fine_tuning_and_the_lr_finder_run_under_the_policy(monkeypatch):
    """A spy in place of the policy: each loop enters it with its model, before any work."""
    seen = []

    @contextmanager
    def spy(model, device):
        seen.append((model, str(device)))
        raise _Reached
        yield

    monkeypatch.setattr(threads, "for_model", spy)
    model = _convnet()
    with pytest.raises(_Reached):
        finetune.fine_tune(model, None, None, None, "cpu", epochs=1)
    with pytest.raises(_Reached):
        engine.lr_find(model, _images())
    with pytest.raises(_Reached):
        engine.evaluate(model, _images(), "cpu")
    assert seen == [(model, "cpu")] * 3
