"""How torch's CPU threads wait for work: OpenMP's spin set before torch loads, one thread for a head.

torch runs its CPU operations on an OpenMP team (2 threads on 2 cores). Between operations, and
at the end of each, a thread that has nothing to do spins (keeps its core busy, checking for
work) for a while before it sleeps. Alone on the machine that saves a wake-up per operation; as
soon as another program is busy, the spinning thread takes the time slice its partner needs,
and a backbone ran 10-20x slower (benchmarks/README.md, "CPU speed on a busy machine").

OpenMP reads its settings once, when torch loads it, so ``set_defaults`` must run before
``import torch``: ``import cifar_tl`` and ``python -m cifar_tl`` call it first. It never changes a
choice the user made, and it cannot help a process that imported torch first (a notebook whose
first cell says ``import torch``): there the first CPU loop gives a one-line warning saying so.
This module imports nothing heavy: it runs before torch is loaded.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from contextlib import contextmanager

# Chosen by benchmarks/bench_busy.py (benchmarks/README.md, "CPU speed on a busy machine"): a
# waiting thread spins 1,000 rounds (about 25 us on the 2-core machine there) and then sleeps. GNU OpenMP's own default is 300,000 rounds (about 7 ms, longer than
# the time slice the partner thread needs); 0 is OMP_WAIT_POLICY=PASSIVE (a wake-up per operation).
DEFAULTS = {"GOMP_SPINCOUNT": "1000"}
# Any of these in the environment is the user's own choice of how threads wait: left as it is.
USER_CHOICE = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# What set_defaults found: "set" (DEFAULTS now in the environment), "user" (the user chose),
# "late" (torch was loaded already: too late for OpenMP to read anything), or None (not called).
status: str | None = None
_warned = False


def set_defaults(environ=None) -> str:
    """Put DEFAULTS in the environment unless torch is loaded already or the user set any of
    USER_CHOICE. Returns and records the outcome (see ``status``); the first call decides."""
    global status
    if status is not None:
        return status
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_CHOICE):
        status = "user"
    elif "torch" in sys.modules:
        status = "late"
    else:
        environ.update(DEFAULTS)
        status = "set"
    return status


def warn_if_late(device) -> None:
    """Before a CPU loop on several threads: one warning per process when torch was imported
    before cifar_tl without a wait setting of the user's, so its threads spin."""
    global _warned
    import torch

    if _warned or status != "late" or torch.device(device).type != "cpu" or torch.get_num_threads() < 2:
        return
    _warned = True
    settings = " ".join(f"{k}={v}" for k, v in DEFAULTS.items())
    warnings.warn(
        "torch was imported before cifar_tl, so its CPU threads spin while they wait and run up to "
        "20x slower whenever another program is busy: put `import cifar_tl` before `import torch` "
        f"(and restart the kernel), or set {settings} before starting Python", RuntimeWarning, stacklevel=3)


@contextmanager
def head_threads(device, threads: int = 1):
    """Train a head on cached features with ``threads`` CPU threads (restored after).

    The head's matrices are tiny (batch 8 x 1280 x 256): on a CPU, splitting each across two
    threads costs more in synchronisation than it saves, and when anything else runs on the
    machine the threads wait for each other's time slices (benchmarks/README.md, "Threads for
    the head"). No effect on GPUs.
    """
    import torch

    before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(min(threads, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_head(model) -> bool:
    """A model without convolutions (an MLP on cached features): its operations are too small
    to share between threads."""
    from torch import nn

    return not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


@contextmanager
def for_model(model, device):
    """The threads a loop over ``model`` runs on: one for a head (``head_threads``), all of them
    for a backbone, with ``warn_if_late`` first."""
    if is_head(model):
        with head_threads(device):
            yield
    else:
        warn_if_late(device)
        yield


def per_model(fn):
    """Decorate a loop ``fn(model, ..., device)`` (the parameters so named) to run under
    ``for_model``: the one line that puts a library loop under this module's policy."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def loop(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with for_model(bound.arguments["model"], bound.arguments["device"]):
            return fn(*args, **kwargs)

    return loop
