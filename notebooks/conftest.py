"""nbval runs every notebook offline in the smoke profile, and reports each notebook's wall time.

The environment is set before each notebook cell (the first one starts the kernel, which inherits
it) and put back after it, so the unit tests in tests/ never see it, whatever the order.
"""

import os
import re
import shutil
import tempfile
from collections import defaultdict

import pytest

# The smoke profile whatever the shell says: a notebook run under pytest must stay offline and
# quick, even for a user whose CIFAR_TL_PROFILE names full or cpu (papermill is for those).
# CIFAR_TL_EXERCISES=verify: each exercise's check cell also runs its solution (it must be right)
# and its known wrong answers (each must be wrong, with its own diagnosis), on copies of the state.
NOTEBOOK_ENV = {"CIFAR_TL_PROFILE": "smoke", "CIFAR_TL_WIDGETS": "static", "CIFAR_TL_EXERCISES": "verify"}

_saved: dict[str, str | None] = {}
_data_root: list[str] = []
_seconds: dict[str, float] = defaultdict(float)


def _is_notebook(item) -> bool:
    return item.nodeid.split("::", 1)[0].endswith(".ipynb")


def _apply(env: dict[str, str]) -> None:
    for key, value in env.items():
        _saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value


def _restore() -> None:
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved.clear()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not _is_notebook(item):
        return
    env = dict(NOTEBOOK_ENV)
    if not os.environ.get("OMP_WAIT_POLICY"):  # the user's own setting wins
        # torch's OpenMP threads spin while they wait for work. When other processes share the
        # cores (CI neighbours, parallel test runs), the spinning starves the working threads: on
        # 2 busy cores, 512 backbone passes took 34 s instead of 2.3 s and a 15-epoch head 127 s
        # instead of 1.1 s. Waiting passively (sleeping) avoids that at a tiny wake-up cost.
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if not os.environ.get("TORCH_HOME"):  # the user's own setting wins
        # The smoke profile's synthetic weights, built once per machine: where tests/conftest.py
        # keeps them (beside pytest's numbered temp folders), so the notebooks never rebuild them.
        base = item.config._tmp_path_factory.getbasetemp()  # noqa: SLF001  (pytest's own temp root)
        env["TORCH_HOME"] = str(base.parent / "cifar_tl-torch" if re.fullmatch(r"pytest-\d+", base.name)
                                else base / "torch")
    if not os.environ.get("CIFAR_TL_DATA"):  # the user's own setting wins
        # Never the user's cache: one folder for the session, so notebooks share extracted features.
        if not _data_root:
            _data_root.append(tempfile.mkdtemp(prefix="cifar_tl_nbval_"))
        env["CIFAR_TL_DATA"] = _data_root[0]
    _apply(env)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    # Put the environment back after each cell: the kernel inherited it when it started, and this
    # conftest's hooks never run for tests outside notebooks/ (a later unit test saw
    # CIFAR_TL_EXERCISES=verify and its blank-answer checks ran the solutions).
    if _is_notebook(item):
        _restore()


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_sessionfinish(session):
    _restore()
    for root in _data_root:
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    tr = terminalreporter
    tr.section("notebook wall time (kernel start and every cell)")
    for path, seconds in sorted(_seconds.items()):
        tr.write_line(f"{seconds:7.1f} s  {path}")
    tr.write_line(f"{sum(_seconds.values()):7.1f} s  total")
