"""End-to-end jobs behind the CLI: run (fast or tutorial path, resumable), evaluate and predict a checkpoint."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import checkpoint, data, engine, features, viz
from .config import Config, resolve_device
from .errors import CifarTLError, ConfigError
from .features import FeatureLoader, atomic_torch_save
from .models import TransferModel, check_backbone, check_image_size


class Interrupted(CifarTLError):
    """Training was interrupted; what was completed is on disk."""


def validate(cfg: Config) -> None:
    """Raise ConfigError for values no run can use (the CLI exits 2 on these)."""
    for name in ("epochs", "batch_size", "image_size"):
        if int(getattr(cfg, name)) <= 0:
            raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("train_size", "test_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ConfigError(f"{name.replace('_', '-')} must be a positive integer")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    check_backbone(cfg.backbone)
    check_image_size(cfg.backbone, cfg.image_size)
    if not (cfg.source in ("cifar100", "synthetic") or cfg.source.startswith("folder:")):
        raise ConfigError(f"unknown source {cfg.source!r}; choose one of {', '.join(data.SOURCES)}")


@contextmanager
def _stage(seconds: dict, name: str):
    t0 = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def run(cfg: Config, out: str | Path, resume: bool = False) -> dict:
    """Train and evaluate a head as ``cfg`` says, writing everything to ``out``. Returns the metrics.

    Files: config.json, metrics.json, history.json, head.pt, state.pt (for --resume), and the
    plots history.png and confusion.png. The fast path (``cfg.cache``) extracts frozen features
    once, both flip views, and trains the head on them; otherwise the tutorial's path recomputes
    the backbone for every image of every epoch.
    """
    out = Path(out)
    state = None
    if resume:
        if not (out / "config.json").is_file():
            raise CifarTLError(f"cannot resume: {out} has no config.json from an earlier run")
        cfg = Config.from_dict(json.loads((out / "config.json").read_text()))
        if (out / "state.pt").is_file():
            state = torch.load(out / "state.pt", map_location="cpu", weights_only=True)
    validate(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", cfg.to_dict())
    except OSError as e:
        raise CifarTLError(f"cannot write to {out} ({e.strerror}): choose another --out") from None
    engine.seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    print(f"run: profile {cfg.profile}, source {cfg.source}, backbone {cfg.backbone} "
          f"({cfg.weights or 'random'} weights), {cfg.image_size} px, device {device}, "
          f"{'cached features' if cfg.cache else 'tutorial path (no cache)'} -> {out}")

    with _stage(seconds, "load"):
        train_ds, test_ds = data.build_datasets(cfg)
    with _stage(seconds, "model"):
        model = TransferModel.from_config(cfg, num_classes=len(train_ds.classes)).to(device)
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
            train_loader = data.make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers)
            test_loader = data.make_loader(test_ds, max(cfg.batch_size, 64), False, num_workers=cfg.num_workers)
            trainee = model
    if model.head.standardizer is not None and state is None:
        model.head.standardizer.fit_stats(stats_source)

    optimizer = engine.make_optimizer(trainee, cfg.lr)
    history = []
    if state is not None:
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        print(f"resuming after epoch {len(history)} of {cfg.epochs}")
    meta = dict(class_names=train_ds.classes, coarse_classes=getattr(train_ds, "coarse_classes", None),
                fine_to_coarse=train_ds.fine_to_coarse)

    def on_epoch_end(row, _model, opt):  # after every completed epoch: nothing finished is lost
        history.append(row)
        checkpoint.save_head(out / "head.pt", model.head, config=cfg, metrics=row, **meta)
        atomic_torch_save({"head": model.head.state_dict(), "optimizer": opt.state_dict(),
                           "history": history}, out / "state.pt")
        _write_json(out / "history.json", history)

    with _stage(seconds, "train"):
        engine.fit(trainee, train_loader, test_loader if cfg.cache else None, epochs=cfg.epochs,
                   device=device, optimizer=optimizer, history=list(history), seed=cfg.seed,
                   progress=cfg.progress, on_epoch_end=on_epoch_end)
    if len(history) < cfg.epochs:
        raise Interrupted(
            f"interrupted after {len(history)} of {cfg.epochs} epoch(s); the completed epochs "
            f"are saved in {out}; continue with: python -m cifar_tl run --resume {out}")

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
    viz.save_report(out, history, ev, train_ds)
    print(f"test accuracy {ev.accuracy:.4f} (top-5 {ev.top5:.4f}) on {ev.n} test images; "
          f"{seconds['total']:.1f} s; wrote {out}")
    return metrics


def load_model(path: str | Path, device="cpu", weights=None) -> tuple[TransferModel, dict]:
    """The backbone the checkpoint was trained on, with its head: ready for evaluate/predict."""
    from .models import build_backbone

    head, meta = checkpoint.load_head(path)
    backbone = build_backbone(meta["backbone"], weights if weights is not None else meta["weights"])
    if backbone.num_features != meta["feature_dim"]:
        raise CifarTLError(f"{path}: feature width {meta['feature_dim']} does not match "
                           f"{meta['backbone']} ({backbone.num_features})")
    return TransferModel(backbone, head).to(device).eval(), meta


def evaluate_checkpoint(path: str | Path, **overrides) -> dict:
    """Evaluate a saved head on the test split its config names (overrides allowed)."""
    blob = checkpoint.read_checkpoint(path)
    cfg = Config.from_dict(blob["config"]).replace(**overrides)
    validate(cfg)
    checkpoint.check_compatible(blob, path, backbone=cfg.backbone, image_size=cfg.image_size)
    device = resolve_device(cfg.device)
    model, meta = load_model(path, device, cfg.weights)
    test_ds = data.build_source(cfg, train=False)
    if len(test_ds.classes) != meta["num_classes"]:
        raise CifarTLError(f"{path}: trained for {meta['num_classes']} classes, but {cfg.source} "
                           f"has {len(test_ds.classes)}")
    feats, targets, _ = features.cached_features(cfg, test_ds, model.backbone, device,
                                                 features.VIEWS_TEST, use_cache=cfg.cache)
    ev = engine.evaluate(model.head, FeatureLoader(feats, targets, 256, train=False, device=device),
                         device, cfg.progress)
    return {"test_accuracy": ev.accuracy, "test_top5": ev.top5, "n_test": ev.n, "source": cfg.source}


def predict_files(path: str | Path, files, device="cpu", k: int = 5):
    """Top-k predictions for image files. Returns [(file, [(class, prob), ...] or error string)]."""
    model, meta = load_model(path, resolve_device(device))
    transform = data.eval_transform(meta["image_size"])
    names = meta["class_names"]
    results = []
    for f in files:
        try:
            x = transform(data.open_image(f))[None]
        except CifarTLError as e:
            results.append((str(f), str(e)))
            continue
        probs, idx = engine.predict(model, x, next(model.parameters()).device, k)
        results.append((str(f), [(names[i], float(p)) for p, i in zip(probs[0].tolist(), idx[0].tolist())]))
    return results
