"""The end-to-end run behind `python -m cifar_tl run`, as named steps: data, model, loaders,
restore, epochs (each checkpointed), report. Resumable and interrupt-safe."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from . import (
    checkpoint,
    data,
    engine,
    engines,
    features,
    finetune,
    pack,
    parameters,
    results,
    runs,
    storage,
    viz,
)
from .config import Config, epoch_seed
from .devices import resolve_device
from .errors import CifarTLError, ConfigError, DataError, Interrupted, OutOfMemory, one_line
from .features import FeatureLoader
from .models import MLPHead, TransferModel, build_backbone, normalization

log = logging.getLogger(__name__)

__all__ = ["Interrupted", "run"]


# --------------------------------------------------------------------------- run
def run(cfg: Config | None, out: str | Path, resume: bool = False, overwrite: bool = True,
        **changes) -> dict:
    """Train and evaluate a head as ``cfg`` says, writing everything to ``out``. Returns the metrics.

    Files: config.json, metrics.json, history.json, head.pt (model.pt when ``cfg.unfreeze``
    fine-tunes stages of the backbone), state.pt (for ``resume``), and the plots history.png and
    confusion.png. The fast path (``cfg.cache``) extracts frozen features once and trains the head
    on them; otherwise the tutorial's path recomputes the backbone for every image of every epoch.

    After every epoch head.pt, history.json and state.pt are written (atomically, together). A
    Ctrl-C, kernel interrupt or SIGTERM raises ``Interrupted`` after keeping the last completed
    epoch; ``run(None, out, resume=True)`` (``--resume``) continues with the settings in
    ``out/config.json`` (``changes`` may set the fields of ``Config.resumable()``) and ends with
    results bit-identical to an uninterrupted run on the same CPU. ``overwrite=False`` refuses a
    folder that already holds a run, or any other non-empty folder (the CLI's default).
    """
    r = _start(cfg, Path(out), resume, overwrite, changes)
    claim = runs.claim(r.out, resume, overwrite)  # a second run into the folder is refused now
    try:
        return _steps(r)
    except KeyboardInterrupt:
        raise runs.interrupted(r.out, r.doing, len(r.history), r.cfg.total_epochs(), r.resume) from None
    except (RuntimeError, MemoryError) as e:
        if not runs.out_of_memory(e):
            raise
        saved = f"; the {len(r.history)} completed epoch(s) are saved: --resume {runs.quoted(r.out)}" if r.history else ""
        raise OutOfMemory(f"out of memory on {r.device} while {r.doing}: lower --image-size or "
                          f"--batch-size, or close other notebooks and programs{saved}") from None
    finally:
        claim.release()  # and a run that failed before writing anything leaves no empty folder


def _steps(r: runs.Run) -> dict:
    """Every step of a run, each timed into ``metrics["seconds"]``."""
    engine.seed_everything(r.cfg.seed)
    t0 = time.perf_counter()
    log.info("run: profile %s, source %s, backbone %s (%s weights), %s px, device %s, %s -> %s",
             r.cfg.profile, r.cfg.source, r.cfg.backbone, r.cfg.weights or "random", r.cfg.image_size,
             r.device, "cached features" if r.cfg.cache else "tutorial path (no cache)", r.out)
    with r.step("load", "loading the data"):
        load_data(r)
    with r.step("model", "building the model"):
        build_model(r)
    with r.step("extract", "extracting features"):
        make_loaders(r)
    begin(r)
    with r.step("train", "training"):
        train(r, r.cfg.head_phase_epochs() or r.cfg.epochs)
    if r.cfg.unfreeze:
        with r.step("fine_tune", "training"):
            fine_tune(r)
    with r.step("evaluate", "the final evaluation"):
        if r.cfg.unfreeze:
            ev = finetune.evaluate_dataset(r.model, r.test_ds, r.cfg, r.device)
        else:
            ev = engine.evaluate(r.trainee, r.test_loader, r.device, r.cfg.progress)
    r.seconds["total"] = round(time.perf_counter() - t0, 3)
    return results.report(r, ev)


def _start(cfg: Config | None, out: Path, resume: bool, overwrite: bool, changes: dict) -> runs.Run:
    """The run's settings (from ``cfg``, or from ``out`` when resuming), checked before any work."""
    parameters.check_config(cfg, "run")
    if resume:
        cfg = runs.resume_config(cfg, out, changes)
    elif cfg is None:
        raise ConfigError("run needs a Config, or resume=True to continue a folder")
    else:
        cfg = cfg.replace(**changes) if changes else cfg
    cfg.validate()
    if not resume:
        parameters.note_ineffective(cfg)
    r = runs.Run(cfg, out, resume, resolve_device(cfg.device))
    if resume:
        r.state = runs.load_state(out, cfg)
        r.history = list(r.state["history"]) if r.state else []
        done = (out / "metrics.json").is_file()
        if r.state is None and done:
            raise CifarTLError(f"{out} already finished{runs.accuracy(out)} and has no state.pt to continue "
                               "from: nothing to resume; start a new run to train again")
        # --epochs counts the fine-tuning epochs of a fine-tuning run (the head's come first)
        counted = [row for row in r.history if not cfg.unfreeze or row.get("phase") == "fine-tune"]
        what = "fine-tuning epochs (after the head's)" if cfg.unfreeze else "epochs"
        if len(counted) > cfg.epochs:
            raise ConfigError(f"{out} has already trained {len(counted)} {what}; --epochs must be at least that")
        if r.state and len(r.history) == cfg.total_epochs() and done:
            raise CifarTLError(f"{out} already finished all {cfg.epochs} {what}{runs.accuracy(out)}: nothing to "
                               f"resume; to train longer: python -m cifar_tl run --resume {runs.quoted(out)} --epochs N")
        r.written = set(runs.written_files(out) or ())
    return r


# --------------------------------------------------------------------------- the steps
def load_data(r: runs.Run) -> None:
    """The training, validation and test splits, with the tutorial's transforms."""
    if r.cfg.features:
        pack.load_data(r)
    else:
        r.train_ds, r.val_ds, r.test_ds = data.build_datasets(r.cfg)
    if len(r.train_ds) == 0 or len(r.test_ds) == 0:
        raise DataError(f"{r.cfg.source}: the {'training' if len(r.train_ds) == 0 else 'test'} split is empty")
    val = f"{len(r.val_ds)} validation" if r.val_ds is not None else "no validation (--val-size 0)"
    log.info("splits: %d training, %s, %d test images", len(r.train_ds), val, len(r.test_ds))


def build_model(r: runs.Run) -> None:
    """The frozen backbone and a fresh head sized from the backbone and the data."""
    if r.cfg.features:
        return pack.build_model(r)
    backbone = build_backbone(r.cfg.backbone, r.cfg.weights, r.cfg.seed, r.cfg.progress)
    r.fingerprint = checkpoint.backbone_fingerprint(backbone)
    head = MLPHead(backbone.num_features, len(r.train_ds.classes), r.cfg.hidden, r.cfg.standardizes())
    r.model = TransferModel(backbone, head).to(r.device)


def make_loaders(r: runs.Run, judged: tuple[str, ...] = ("val", "test")) -> None:
    """Cached features (the fast path) or the tutorial's image loaders, and what trains on them;
    loaders of the ``judged`` splits too (lr-find needs none: it never looks at them)."""
    if r.cfg.features:
        return pack.make_loaders(r, judged)
    cfg, model = r.cfg, r.model
    if cfg.cache:
        # Only the views that the run's epochs sample are extracted (one per image for one
        # epoch); a longer or resumed run extracts the others when it first samples them.
        r.store = features.FeatureStore(cfg, r.train_ds, model.backbone, r.device, features.VIEWS_TRAIN)
        epochs = cfg.head_phase_epochs() or cfg.epochs  # of the head on these features
        planned = features.plan_views(len(r.store.targets), cfg.seed, epochs)
        r.store.ensure(planned)
        r.backbone_run = {"engine": r.store.engine, "precision": r.store.precision, "backbone_reason": r.store.reason}
        log.info("backbone: %s", r.store.reason)
        # The head's statistics come from the views this run's own epochs sample, never from
        # whatever other views an earlier run left in the cache: a result depends on its settings only.
        r.stats_source = r.store.features[planned]
        r.train_loader = FeatureLoader(r.store.features, r.store.targets, cfg.batch_size, train=True,
                                       seed=cfg.seed, device=r.device, store=r.store)
        for split, ds in (("val", r.val_ds), ("test", r.test_ds)):
            if ds is None or split not in judged:
                continue
            f, y, r.cache_info[split] = features.cached_features(cfg, ds, model.backbone, r.device,
                                                                 features.VIEWS_TEST)
            loader = FeatureLoader(f, y, max(cfg.batch_size, 256), train=False, device=r.device)
            setattr(r, f"{split}_loader", loader)
        r.trainee = model.head
    else:
        runner = engines.make_runner(model.backbone, r.device, cfg.image_size, cfg.engine, cfg.precision,
                                     cfg.data_root)
        model.runner = runner  # the tutorial path runs the backbone this way every step
        r.backbone_run = {"engine": runner.engine, "precision": runner.precision, "backbone_reason": runner.reason}
        log.info("backbone: %s", runner.reason)
        if model.head.standardizer is not None:  # its statistics from up to 1,000 training images
            imgs = features.images_uint8(r.train_ds, cfg.image_size)[:1000]
            r.stats_source = features.extract(model.backbone, imgs, cfg.image_size, r.device, features.VIEWS_TEST,
                                              progress=cfg.progress, runner=runner)
        r.train_loader = _EpochSeeded(
            data.make_loader(r.train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers), cfg.seed)
        for split, ds in (("val", r.val_ds), ("test", r.test_ds)):
            if ds is not None and split in judged:
                setattr(r, f"{split}_loader", data.make_loader(ds, max(cfg.batch_size, 64), False,
                                                               num_workers=cfg.num_workers))
        r.trainee = model


def begin(r: runs.Run) -> None:
    """Claim the folder, fit the head's statistics, and restore the state of a resumed run."""
    if not r.resume:  # the folder now belongs to this run: no file of an earlier run may linger
        runs.remove_run_files(r.out)
    r.write("config.json", r.cfg.to_dict(), "json")
    head = r.model.head
    if head.standardizer is not None and r.state is None:
        head.standardizer.fit_stats(r.stats_source)
    r.optimizer = engine.make_optimizer(r.trainee, r.cfg.lr)
    if r.state is not None:
        try:
            head.load_state_dict(r.state["head"])
            if r.state.get("phase", "head") == "head":  # a fine-tuning state is restored by fine_tune
                r.optimizer.load_state_dict(r.state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CifarTLError(f"{r.out / 'state.pt'} does not fit this run ({one_line(e, 100)}); "
                               "delete it to train again from epoch 1 with --resume") from None
        log.info("resuming after epoch %d of %d", len(r.history), r.cfg.total_epochs())


def train(r: runs.Run, epochs: int) -> None:
    """The head's epochs (all of a frozen run; the head phase of a fine-tuning one). After each,
    its files are written together, so nothing finished is lost."""
    def on_epoch_end(row, _model, opt):
        if r.cfg.unfreeze:
            row["phase"] = "head"
        results.save_epoch(r, row, opt)

    # The tiny head trains faster on one CPU thread (engine.head_threads); the tutorial path
    # runs the backbone every step and keeps all threads.
    threads = engine.head_threads(r.device) if r.cfg.cache else nullcontext()
    head_rows = [row for row in r.history if row.get("phase") != "fine-tune"]
    if len(head_rows) >= epochs:
        return
    with threads:
        engine.fit(r.trainee, r.train_loader, r.val_loader, epochs=epochs, device=r.device,
                   optimizer=r.optimizer, history=head_rows, seed=r.cfg.seed,
                   progress=r.cfg.progress, on_epoch_end=on_epoch_end)
    if len(r.history) < epochs:  # fit stopped at an interrupt and kept the completed epochs
        raise runs.interrupted(r.out, "training", len(r.history), r.cfg.total_epochs(), r.resume)


def fine_tune(r: runs.Run) -> None:
    """Unfreeze the top stages and train them with the head on images (the head phase is done).
    After each epoch the state and model.pt are written together."""
    cfg, model = r.cfg, r.model
    finetune.unfreeze(model.backbone, cfg.unfreeze, cfg.bn_train)
    r.optimizer = finetune.make_optimizer(model, cfg.lr, cfg.lr_decay, cfg.weight_decay)
    r.trainee = model
    if r.state is not None and r.state.get("phase") == "fine-tune":
        try:
            model.backbone.load_state_dict(r.state["backbone"], strict=False)
            r.optimizer.load_state_dict(r.state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CifarTLError(f"{r.out / 'state.pt'} does not fit this run ({one_line(e, 100)}); "
                               "delete it to train again from epoch 1 with --resume") from None

    def on_epoch_end(row, _model, opt):
        results.save_epoch(r, row, opt, fine_tuned=True)

    done = [row for row in r.history if row.get("phase") == "fine-tune"]
    finetune.fine_tune(model, r.train_ds, r.val_ds, cfg, r.device, epochs=cfg.epochs, history=done,
                       optimizer=r.optimizer, batch_size=None, on_epoch_end=on_epoch_end)


class _EpochSeeded:
    """The tutorial path's DataLoader, with its shuffle and its random flips (the global torch RNG)
    seeded from (seed, epoch) alone: a resumed run sees exactly the batches of an uninterrupted one."""

    def __init__(self, loader, seed: int):
        self.loader, self.seed, self.dataset = loader, seed, loader.dataset

    def set_epoch(self, epoch: int) -> None:
        self.loader.generator.manual_seed(epoch_seed(self.seed, epoch))
        torch.manual_seed(epoch_seed(self.seed, epoch) + 1)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def lr_find(cfg: Config, out: str | Path = ".") -> dict:
    """Smith's learning-rate range test for ``cfg``'s head (on cached features: seconds), or for
    the model with its top ``cfg.unfreeze`` stages unfrozen (on images). Writes ``lr_find.png``
    to ``out``; returns ``engine.lr_find``'s result with ``plot`` (the file) added."""
    parameters.check_config(cfg, "lr_find")
    cfg = cfg.validate()
    r = runs.Run(cfg, Path(out), False, resolve_device(cfg.device))
    storage.check_writable(r.out)
    load_data(r)
    if len(r.train_ds.classes) < 2:  # the loss is 0 at every rate: any suggestion would be noise
        raise DataError(f"{cfg.source}: lr-find needs at least 2 classes, the data has "
                        f"{len(r.train_ds.classes)}: add a class folder")
    build_model(r)
    make_loaders(r, judged=())
    if r.model.head.standardizer is not None:
        r.model.head.standardizer.fit_stats(r.stats_source)
    if cfg.unfreeze:
        finetune.unfreeze(r.model.backbone, cfg.unfreeze, cfg.bn_train)
        batches = finetune.ImageBatches(r.train_ds, cfg.image_size, cfg.batch_size, r.device, True, cfg.seed,
                                        *normalization(cfg.backbone))
        result = engine.lr_find(r.model, batches, r.device, optimizer_fn=lambda ps, lr: torch.optim.AdamW(
            ps, lr=lr, weight_decay=cfg.weight_decay))
    else:  # the head on cached features, or the tutorial path's model on images (--no-cache)
        with engine.head_threads(r.device) if cfg.cache else nullcontext():
            result = engine.lr_find(r.trainee, r.train_loader, r.device)
    if max(result["raw"]) == min(result["raw"]):
        raise DataError(f"the loss stayed at {result['raw'][0]:.4g} at every learning rate: it suggests nothing")
    plot = r.out / "lr_find.png"
    viz.plot_lr_find(result).figure.savefig(plot, dpi=100, bbox_inches="tight")
    return {**result, "plot": str(plot)}
