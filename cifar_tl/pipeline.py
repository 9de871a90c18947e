"""The end-to-end run behind `python -m cifar_tl run`: fast or tutorial path, resumable."""

from __future__ import annotations

import json
import math
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from . import checkpoint, data, engine, features, viz
from .config import Config, resolve_device
from .errors import (
    CheckpointError,
    CifarTLError,
    ConfigError,
    Interrupted,
    one_line,
)
from .features import FeatureLoader
from .models import (
    MLPHead,
    TransferModel,
    build_backbone,
    check_backbone,
    check_image_size,
)

STATE_FORMAT = "cifar_tl.state"
# What a resumed run may change: where and how it runs, and how long it trains. Anything else
# would make the continued run a different experiment.
RESUMABLE_FIELDS = ("epochs", "device", "progress", "data_root", "num_workers", "extract_batch_size")
# Everything run writes besides config.json: removed when a new run replaces an old one in a folder.
RUN_FILES = ("state.pt", "head.pt", "history.json", "metrics.json", "history.png", "confusion.png")

__all__ = ["Interrupted", "run", "validate"]


def validate(cfg: Config) -> None:
    """Raise ConfigError for values no run can use (the CLI exits 2 on these)."""
    for name in ("epochs", "batch_size", "image_size"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
    for name in ("train_size", "test_size"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"lr must be a positive number, got {cfg.lr!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed must be an integer from 0 to 2**32-1, got {cfg.seed!r}")
    if not cfg.hidden or not all(isinstance(h, int) and h > 0 for h in cfg.hidden):
        raise ConfigError(f"hidden must be positive layer widths, got {cfg.hidden!r}")
    check_backbone(cfg.backbone)
    check_image_size(cfg.backbone, cfg.image_size)
    if not (cfg.source in ("cifar100", "synthetic") or cfg.source.startswith("folder:")):
        raise ConfigError(f"unknown source {cfg.source!r}; choose one of {', '.join(data.SOURCES)}")


# --------------------------------------------------------------------------- helpers
@contextmanager
def _stage(seconds: dict, name: str):
    t0 = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        tmp.replace(path)
    except OSError as e:
        raise CifarTLError(f"cannot write {path} ({e.strerror}): free some space or choose another --out") from None


@contextmanager
def _signals_deferred():
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


class _EpochSeeded:
    """The tutorial path's DataLoader, with its shuffle and its random flips (the global torch RNG)
    seeded from (seed, epoch) alone: a resumed run sees exactly the batches of an uninterrupted one."""

    def __init__(self, loader, seed: int):
        self.loader, self.seed, self.dataset = loader, seed, loader.dataset

    def set_epoch(self, epoch: int) -> None:
        self.loader.generator.manual_seed(self.seed * 100_003 + epoch)
        torch.manual_seed(self.seed * 100_003 + epoch + 1)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


# --------------------------------------------------------------------------- run: folders and state
def _load_config(out: Path) -> Config:
    path = out / "config.json"
    if not path.is_file():
        raise CifarTLError(f"cannot resume: {out} has no config.json from an earlier run "
                           "(a run interrupted before its first epoch: start it again without --resume)")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CifarTLError(f"cannot resume: {path} is damaged ({one_line(e, 80)}); start a new run") from None


def _resume_config(cfg: Config | None, out: Path, changes: dict) -> Config:
    stored = _load_config(out)
    if cfg is not None:
        given, kept = cfg.to_dict(), stored.to_dict()
        diffs = [f"{k}: {out} has {kept[k]!r}, given {given[k]!r}" for k in kept
                 if k not in RESUMABLE_FIELDS and kept[k] != given[k]]
        if diffs:
            raise ConfigError(f"cannot resume {out} with other settings ({'; '.join(diffs)}); "
                              f"only {', '.join(RESUMABLE_FIELDS)} may change")
        changes = {**{k: getattr(cfg, k) for k in RESUMABLE_FIELDS}, **changes}
    bad = sorted(set(changes) - set(RESUMABLE_FIELDS))
    if bad:
        raise ConfigError(f"--resume continues {out} with its own settings; these cannot change: "
                          f"{', '.join(bad)} (only {', '.join(RESUMABLE_FIELDS)} can)")
    return stored.replace(**changes)


def _load_state(out: Path, cfg: Config) -> dict | None:
    """The training state of the last completed epoch, or None before the first one."""
    path = out / "state.pt"
    if not path.exists():
        return None
    fix = f"delete {path} to train this run again from epoch 1 with --resume, or start a new run"
    try:
        state = checkpoint.load_file(path, "training state")
    except CheckpointError as e:
        raise CifarTLError(f"{e}; cannot resume from it: {fix}") from None
    ok = (isinstance(state, dict) and state.get("format") == STATE_FORMAT
          and isinstance(state.get("head"), dict) and isinstance(state.get("optimizer"), dict)
          and isinstance(state.get("history"), list) and isinstance(state.get("config"), dict))
    if not ok:
        raise CifarTLError(f"{path} is not a cifar_tl training state; cannot resume from it: {fix}")
    kept = cfg.to_dict()
    diffs = [k for k, v in state["config"].items() if k in kept and k not in RESUMABLE_FIELDS and kept[k] != v]
    if diffs:
        raise CifarTLError(f"{path} belongs to a run with other settings ({', '.join(diffs)}) than "
                           f"{out / 'config.json'}; cannot resume: {fix}")
    return state


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> bool:
    """Check that ``out`` can take this run, before any long work. Returns whether it was created."""
    if out.exists() and not out.is_dir():
        raise CifarTLError(f"--out {out} is a file, not a folder: choose another --out")
    if not resume and (out / "config.json").exists() and not overwrite:
        raise CifarTLError(f"{out} already holds a run: continue it with `python -m cifar_tl run "
                           f"--resume {out}`, replace it with --overwrite, or choose another --out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise CifarTLError(f"cannot write to {out} ({e.strerror}): choose another --out") from None
    return created


def _interrupted(out: Path, stage: str, done: int, epochs: int, resume: bool) -> Interrupted:
    again = f"python -m cifar_tl run --resume {out}"
    if stage == "training":
        return Interrupted(f"interrupted after {done} of {epochs} epoch(s); the completed epochs are "
                           f"saved in {out}; continue with: {again}")
    if stage == "the final evaluation":
        return Interrupted(f"interrupted after all {epochs} epochs, during the final evaluation; the "
                           f"trained head is saved in {out}; finish with: {again}")
    return Interrupted(f"interrupted while {stage}, before any epoch was trained; features already "
                       f"extracted stay cached: {'run ' + again + ' again' if resume else 'run the same command again'}")


# --------------------------------------------------------------------------- run
def run(cfg: Config | None, out: str | Path, resume: bool = False, overwrite: bool = True,
        **changes) -> dict:
    """Train and evaluate a head as ``cfg`` says, writing everything to ``out``. Returns the metrics.

    Files: config.json, metrics.json, history.json, head.pt, state.pt (for ``resume``), and the
    plots history.png and confusion.png. The fast path (``cfg.cache``) extracts frozen features
    once, both flip views, and trains the head on them; otherwise the tutorial's path recomputes
    the backbone for every image of every epoch.

    After every epoch head.pt, history.json and state.pt are written (atomically, together). A
    Ctrl-C, kernel interrupt or SIGTERM raises ``Interrupted`` after keeping the last completed
    epoch; ``run(None, out, resume=True)`` (``--resume``) continues with the settings in
    ``out/config.json`` (``changes`` may set epochs, device, progress, data_root) and ends with
    results bit-identical to an uninterrupted run on the same CPU. ``overwrite=False`` refuses a
    folder that already holds a run (the CLI's default: nothing is lost by a repeated --out).
    """
    out = Path(out)
    if resume:
        cfg = _resume_config(cfg, out, changes)
        state = _load_state(out, cfg)
    else:
        if cfg is None:
            raise ConfigError("run needs a Config, or resume=True to continue a folder")
        cfg, state = (cfg.replace(**changes) if changes else cfg), None
    validate(cfg)
    device = resolve_device(cfg.device)
    history = list(state["history"]) if state else []
    if resume and state is None and (out / "metrics.json").is_file():
        raise CifarTLError(f"{out} already finished{_accuracy(out)} and has no state.pt to continue "
                           "from: nothing to resume; start a new run to train again")
    if len(history) > cfg.epochs:
        raise ConfigError(f"{out} has already trained {len(history)} epochs; --epochs must be at least that")
    if state and len(history) == cfg.epochs and (out / "metrics.json").is_file():
        raise CifarTLError(f"{out} already finished all {cfg.epochs} epochs{_accuracy(out)}: nothing to "
                           f"resume; to train longer: python -m cifar_tl run --resume {out} --epochs N")
    created = _prepare_out(out, resume, overwrite)
    stage = ["loading the data"]
    try:
        return _run(cfg, out, device, state, history, stage, resume)
    except KeyboardInterrupt:
        raise _interrupted(out, stage[0], len(history), cfg.epochs, resume) from None
    except (RuntimeError, MemoryError) as e:
        if not _out_of_memory(e):
            raise
        saved = f"; the {len(history)} completed epoch(s) are saved: --resume {out}" if history else ""
        raise CifarTLError(f"out of memory on {device} while {stage[0]}: lower --image-size or "
                           f"--batch-size, or close other notebooks and programs{saved}") from None
    finally:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            try:
                out.rmdir()
            except OSError:
                pass  # not empty: it holds the run


def _accuracy(out: Path) -> str:
    try:
        return f" (test accuracy {json.loads((out / 'metrics.json').read_text())['test_accuracy']:.4f})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _run(cfg: Config, out: Path, device, state, history: list, stage: list, resume: bool) -> dict:
    engine.seed_everything(cfg.seed)
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    print(f"run: profile {cfg.profile}, source {cfg.source}, backbone {cfg.backbone} "
          f"({cfg.weights or 'random'} weights), {cfg.image_size} px, device {device}, "
          f"{'cached features' if cfg.cache else 'tutorial path (no cache)'} -> {out}")

    with _stage(seconds, "load"):
        train_ds, test_ds = data.build_datasets(cfg)
    stage[0] = "building the model"
    with _stage(seconds, "model"):
        backbone = build_backbone(cfg.backbone, cfg.weights, cfg.seed)
        fingerprint = checkpoint.backbone_fingerprint(backbone)
        head = MLPHead(backbone.num_features, len(train_ds.classes), cfg.hidden, cfg.standardize)
        model = TransferModel(backbone, head).to(device)
    stage[0] = "extracting features"
    cache_info = {}
    with _stage(seconds, "extract"):
        if cfg.cache:
            tr_f, tr_y, cache_info["train"] = features.cached_features(
                cfg, train_ds, model.backbone, device, features.VIEWS_TRAIN)
            te_f, te_y, cache_info["test"] = features.cached_features(
                cfg, test_ds, model.backbone, device, features.VIEWS_TEST)
            stats_source = tr_f
            train_loader = FeatureLoader(tr_f, tr_y, cfg.batch_size, train=True, seed=cfg.seed, device=device)
            test_loader = FeatureLoader(te_f, te_y, max(cfg.batch_size, 256), train=False, device=device)
            trainee = model.head
        else:
            # Statistics for the head's standardisation from up to 1,000 training images.
            imgs = features.images_uint8(train_ds, cfg.image_size)[:1000]
            stats_source = features.extract(model.backbone, imgs, cfg.image_size, device,
                                            features.VIEWS_TEST, amp=cfg.amp, progress=cfg.progress)
            train_loader = _EpochSeeded(
                data.make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers), cfg.seed)
            test_loader = data.make_loader(test_ds, max(cfg.batch_size, 64), False, num_workers=cfg.num_workers)
            trainee = model

    stage[0] = "training"
    if not resume:  # the folder now belongs to this run: no file of an earlier one may linger
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    _write_json(out / "config.json", cfg.to_dict())
    if model.head.standardizer is not None and state is None:
        model.head.standardizer.fit_stats(stats_source)
    optimizer = engine.make_optimizer(trainee, cfg.lr)
    if state is not None:
        try:
            model.head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CifarTLError(f"{out / 'state.pt'} does not fit this run ({one_line(e, 100)}); "
                               "delete it to train again from epoch 1 with --resume") from None
        print(f"resuming after epoch {len(history)} of {cfg.epochs}")
    meta = dict(class_names=train_ds.classes, coarse_classes=getattr(train_ds, "coarse_classes", None),
                fine_to_coarse=train_ds.fine_to_coarse, backbone_fingerprint=fingerprint)

    def on_epoch_end(row, _model, opt):  # after every completed epoch: nothing finished is lost
        with _signals_deferred():
            rows = [*history, row]
            checkpoint.atomic_save({"format": STATE_FORMAT, "config": cfg.to_dict(), "history": rows,
                                    "head": model.head.state_dict(), "optimizer": opt.state_dict()},
                                   out / "state.pt")
            checkpoint.save_head(out / "head.pt", model.head, config=cfg, metrics=row, **meta)
            _write_json(out / "history.json", rows)
            history.append(row)

    # The tiny head trains faster on one CPU thread (features.head_threads); the tutorial path
    # runs the backbone every step and keeps all threads.
    head_only = features.head_threads(device) if cfg.cache else nullcontext()
    with _stage(seconds, "train"), head_only:
        engine.fit(trainee, train_loader, test_loader if cfg.cache else None, epochs=cfg.epochs,
                   device=device, optimizer=optimizer, history=list(history), seed=cfg.seed,
                   progress=cfg.progress, on_epoch_end=on_epoch_end)
    if len(history) < cfg.epochs:  # fit stopped at an interrupt and kept the completed epochs
        raise _interrupted(out, "training", len(history), cfg.epochs, resume)

    stage[0] = "the final evaluation"
    with _stage(seconds, "evaluate"):
        ev = engine.evaluate(trainee, test_loader, device, cfg.progress)
    seconds["total"] = round(time.perf_counter() - t_start, 3)
    metrics = {
        "test_accuracy": ev.accuracy,
        "test_top5": ev.top5,
        "test_loss": ev.loss,
        "n_test": ev.n,
        "n_train": len(train_ds),
        "epochs": len(history),
        "seconds": seconds,
        "device": str(device),
        "cache": cache_info,
        "config": cfg.to_dict(),
    }
    checkpoint.save_head(out / "head.pt", model.head, config=cfg, metrics=metrics, **meta)
    _write_json(out / "history.json", history)
    _write_json(out / "metrics.json", metrics)
    try:
        viz.save_report(out, history, ev, train_ds)
    except Exception as e:  # the plots are a convenience: the results are already on disk
        print(f"note: could not draw the plots ({e.__class__.__name__}: {one_line(e, 100)})", file=sys.stderr)
    print(f"test accuracy {ev.accuracy:.4f} (top-5 {ev.top5:.4f}) on {ev.n} test images; "
          f"{seconds['total']:.1f} s; wrote {out}")
    return metrics
