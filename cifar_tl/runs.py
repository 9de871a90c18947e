"""A run: what its steps have made so far, writing its files, resuming it, and its messages.
Its folder (the marker, the claim) is ``runfolder``."""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, storage
from .config import Config
from .errors import CifarTLError, ConfigError, Interrupted, one_line
from .runfolder import (
    LOCK,
    MARKER,
    MARKER_FORMAT,
    claim,
    quoted,
    read_text,
    regular,
    remove_run_files,
    written_files,
)

__all__ = ["LOCK", "MARKER", "MARKER_FORMAT", "Run", "claim", "quoted", "remove_run_files", "written_files"]
STATE_FORMAT = "cifar_tl.state"


@dataclass
class Run:
    """One run's settings and what its steps have made so far."""

    cfg: Config
    out: Path
    resume: bool
    device: torch.device
    state: dict | None = None
    history: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    doing: str = "loading the data"  # for the interrupt and out-of-memory messages
    written: set = field(default_factory=set)
    train_ds: object = None
    val_ds: object = None  # None with --val-size 0
    test_ds: object = None
    model: torch.nn.Module | None = None
    fingerprint: str | None = None
    trainee: torch.nn.Module | None = None
    train_loader: object = None
    val_loader: object = None
    test_loader: object = None
    stats_source: torch.Tensor | None = None
    optimizer: torch.optim.Optimizer | None = None
    cache_info: dict = field(default_factory=dict)
    store: object = None  # the training features of the fast path
    backbone_run: dict = field(default_factory=dict)  # engine, precision and why, for metrics.json

    @contextmanager
    def step(self, name: str, doing: str):
        """Time a step into ``seconds[name]`` and say what is being done, for messages."""
        self.doing = doing
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)

    def write(self, name: str, obj, kind: str = "torch") -> None:
        """Write one file of the run atomically, and record it in the folder's marker."""
        path = self.out / name
        if kind == "json":
            storage.write_json(path, obj)
        elif kind == "torch":
            storage.atomic_save(obj, path)
        self.record(name)

    def record(self, name: str) -> None:
        """List a file the run wrote in the folder's marker (so a new run may remove it)."""
        if name not in self.written:
            self.written.add(name)
            storage.write_json(self.out / MARKER, {"format": MARKER_FORMAT,
                                                        "files": sorted(self.written)})



def resume_config(cfg: Config | None, out: Path, changes: dict) -> Config:
    stored = load_config(out)
    if cfg is not None:
        diff = stored.diff(cfg, ignore=Config.resumable())
        if diff:
            raise ConfigError(f"cannot resume {out} with other settings ({Config.describe_diff(diff)}); "
                              f"only {', '.join(Config.resumable())} may change")
        changes = {**{k: getattr(cfg, k) for k in Config.resumable()}, **changes}
    bad = sorted(set(changes) - set(Config.resumable()))
    if bad:
        raise ConfigError(f"--resume continues {out} with its own settings; these cannot change: "
                          f"{', '.join(bad)} (only {', '.join(Config.resumable())} can)")
    return stored.replace(**changes)


def load_config(out: Path) -> Config:
    path = out / "config.json"
    if not path.is_file():
        raise CifarTLError(f"cannot resume: {out} has no config.json from an earlier run "
                           "(a run interrupted before its first epoch: start it again without --resume)")
    try:
        return Config.from_dict(json.loads(read_text(path))).validate()
    except (OSError, ValueError) as e:  # ConfigError is a ValueError
        raise CifarTLError(f"cannot resume: {path} is damaged ({one_line(e, 120)}); start a new run") from None


def load_state(out: Path, cfg: Config) -> dict | None:
    """The training state of the last completed epoch, or None before the first one."""
    path = out / "state.pt"
    if regular(path) is None:
        return None
    fix = f"delete {path} to train this run again from epoch 1 with --resume, or start a new run"
    if not regular(path):
        raise CifarTLError(f"{path} is not a regular file; cannot resume from it: {fix}")
    try:
        state = checkpoint.load_file(path, "training state")
    except CifarTLError as e:
        raise CifarTLError(f"{e}; cannot resume from it: {fix}") from None
    ok = (isinstance(state, dict) and state.get("format") == STATE_FORMAT
          and isinstance(state.get("head"), dict) and isinstance(state.get("optimizer"), dict)
          and isinstance(state.get("history"), list) and isinstance(state.get("config"), dict)
          and all(isinstance(row, dict) for row in state["history"]))
    if not ok:
        raise CifarTLError(f"{path} is not a cifar_tl training state or is damaged; cannot resume from it: {fix}")
    try:
        diff = cfg.diff(Config.from_dict(state["config"]), ignore=Config.resumable())
    except ConfigError as e:
        raise CifarTLError(f"{path}: {e}; cannot resume from it: {fix}") from None
    if diff:
        raise CifarTLError(f"{path} belongs to a run with other settings ({', '.join(diff)}) than "
                           f"{out / 'config.json'}; cannot resume: {fix}")
    return state


def accuracy(out: Path) -> str:
    try:
        return f" (test accuracy {json.loads(read_text(out / 'metrics.json'))['test_accuracy']:.4f})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def interrupted(out: Path, doing: str, done: int, epochs: int, resume: bool) -> Interrupted:
    """The message for a run stopped while ``doing`` after ``done`` of ``epochs`` epochs."""
    again = f"python -m cifar_tl run --resume {quoted(out)}"
    if doing == "training":
        return Interrupted(f"interrupted after {done} of {epochs} epoch(s); the completed epochs are "
                           f"saved in {out}; continue with: {again}")
    if doing == "the final evaluation":
        return Interrupted(f"interrupted after all {epochs} epochs, during the final evaluation; the "
                           f"trained head is saved in {out}; finish with: {again}")
    return Interrupted(f"interrupted while {doing}, before any epoch was trained; features already "
                       f"extracted stay cached: {'run ' + again + ' again' if resume else 'run the same command again'}")


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


@contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM while one epoch's files are written, then deliver them: the files
    on disk always describe the same completed epoch. Only Python-level handlers are held (the
    default SIGTERM still kills at once, and atomic writes cover that)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending, old = [], {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        handler = signal.getsignal(sig) if sig is not None else None
        if callable(handler):
            old[sig] = handler
            signal.signal(sig, lambda s, f: pending.append((s, f)))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            s, f = pending[0]
            old[s](s, f)
