"""Using a saved head: rebuild its model, evaluate it on a test split, predict image files."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torchvision

from . import checkpoint, data, engine, features, finetune
from .config import Config
from .devices import resolve_device
from .errors import CheckpointError, CifarTLError, DataError
from .features import FeatureLoader
from .models import TransferModel, build_backbone, normalization

__all__ = ["evaluate_checkpoint", "iter_predictions", "load_model", "match_classes", "predict_files"]

log = logging.getLogger(__name__)


def load_model(path: str | Path, device="cpu", weights=None, blob=None) -> tuple[TransferModel, dict]:
    """The backbone the checkpoint was trained on, with its head: ready for evaluate/predict.

    A random backbone is rebuilt from the run's seed, and the checkpoint's backbone fingerprint
    proves it is the same one (else CheckpointError, not silently wrong predictions). A
    fine-tuned run's ``model.pt`` also puts back the trained stages. ``blob``: the file's contents,
    if already loaded (``checkpoint.load_file``).
    """
    blob = checkpoint.load_file(path) if blob is None else blob
    if _fine_tuned(blob):
        return finetune.load_model_checkpoint(path, device, blob)
    head, meta = checkpoint.load_head(path, blob=blob)
    name = checkpoint.known_backbone(meta["backbone"], path)
    if weights is None:
        checkpoint.check_weights_file(meta, path)
        weights = meta["weights"]
    seed = meta["config"].get("seed", 0)
    backbone = build_backbone(name, weights, seed if isinstance(seed, int) else 0)
    if backbone.num_features != meta["feature_dim"]:
        raise CheckpointError(f"{path}: feature width {meta['feature_dim']} does not match "
                              f"{name} ({backbone.num_features})")
    expected = meta.get("backbone_fingerprint")
    if expected and checkpoint.backbone_fingerprint(backbone) != expected:
        made = meta.get("versions", {})
        raise CheckpointError(
            f"{path}: the {name} backbone ({weights or 'random'} weights) rebuilt here is not the one "
            f"this head was trained on (made with torch {made.get('torch')}, torchvision "
            f"{made.get('torchvision')}; here {torch.__version__}, {torchvision.__version__}): use it with those "
            "versions, or train a new head here")
    return TransferModel(backbone, head).to(device).eval(), meta


def _fine_tuned(blob) -> bool:
    """Whether a loaded checkpoint is a fine-tuned run's model.pt (else a head.pt)."""
    return isinstance(blob, dict) and blob.get("format") == finetune.MODEL_FORMAT


def evaluate_config(path: str | Path, blob: dict, profile: Config | None = None, **overrides) -> Config:
    """The config to evaluate a checkpoint with: the model's settings from the checkpoint, the
    machine's from this machine, the data's from ``profile`` (if given), then ``overrides``.
    An override that contradicts the model is refused (ConfigError), naming each difference."""
    trained = Config.from_dict(blob["config"])  # read_checkpoint has validated it
    cfg = trained.replace(**Config().select("machine"))
    if profile is not None:
        cfg = cfg.replace(**profile.select("data"))
    cfg = cfg.replace(**overrides).validate()
    diff = trained.diff(cfg, roles=("model",))
    if diff:
        raise CheckpointError(f"{path} does not fit this model: {Config.describe_diff(diff, 'checkpoint has', 'expected')} "
                          "(evaluate takes the model's settings from the checkpoint: drop those options)")
    return cfg


def evaluate_checkpoint(path: str | Path, profile: Config | None = None, **overrides) -> dict:
    """Evaluate a saved head on the test split its config names.

    The model's settings (backbone, weights, image size, head) come from the checkpoint, the
    machine's (data folder, device, precision) from this machine; ``profile`` and ``overrides``
    may change the data (source, test_size ...). An override that contradicts the model is
    refused, naming each difference.
    """
    blob = checkpoint.load_file(path)
    fine_tuned = _fine_tuned(blob)
    cfg = evaluate_config(path, finetune.read_model(path, blob)["head"] if fine_tuned
                          else checkpoint.read_checkpoint(path, blob), profile, **overrides)
    device = resolve_device(cfg.device)
    model, meta = load_model(path, device, blob=blob)
    test_ds, evaluated = match_classes(path, data.build_source(cfg, train=False), meta["class_names"], cfg.source)
    if fine_tuned:  # its backbone is no longer the frozen one: images through the whole model
        ev = finetune.evaluate_dataset(model, test_ds, cfg, device)
    else:
        feats, targets, _ = features.cached_features(cfg, test_ds, model.backbone, device,
                                                     features.VIEWS_TEST, use_cache=cfg.cache)
        ev = engine.evaluate(model.head, FeatureLoader(feats, targets, 256, train=False, device=device),
                             device, cfg.progress)
    return {"test_accuracy": ev.accuracy, "test_top5": ev.top5, "n_test": ev.n, "source": cfg.source,
            "classes": {"evaluated": evaluated, "known": meta["num_classes"]}}


def match_classes(path, test_ds, names: list[str], source: str = "the test split"):
    """(the test split with its labels renumbered to the head's classes ``names``, matched by name
    as training matches its splits; the number of classes it holds). A class the head does not
    know is refused (DataError naming it); a subset of the head's classes is evaluated, with a
    notice."""
    own = list(test_ds.classes)
    present = sorted({int(t) for t in test_ds.targets})
    index = {c: i for i, c in enumerate(names)}
    unknown = [own[t] for t in present if own[t] not in index]
    if unknown:
        raise DataError(f"{path} does not know {len(unknown)} class(es) of {source}: "
                        f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''} (its "
                        f"{len(names)} classes: {', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''}); "
                        "evaluate on images of its classes only (matched by folder name)")
    if len(present) < len(names):
        log.info("evaluating on %d of the %d classes %s knows (matched by name): accuracy over those "
                 "classes, the head still chooses among all %d", len(present), len(names), path, len(names))
    if own == list(names):
        return test_ds, len(present)
    renamed = copy.copy(test_ds)  # the source itself is not changed
    renamed.targets = [index[own[int(t)]] for t in test_ds.targets]
    renamed.classes, renamed.class_to_idx = list(names), index
    return renamed, len(present)


def predict_files(path: str | Path, files, device="cpu", k: int = 5) -> list:
    """Top-k predictions for image files: [(file, [(class, prob), ...] or an error string)].

    A file that cannot be read gets a one-line error string naming it; the others are predicted.
    """
    return list(iter_predictions(path, files, device, k))


def iter_predictions(path: str | Path, files, device="cpu", k: int = 5):
    """``predict_files`` one file at a time, each yielded as soon as it is done (so an interrupted
    long run keeps what it printed)."""
    if isinstance(files, (str, Path)):
        files = [files]
    model, meta = load_model(path, resolve_device(device))
    transform = data.eval_transform(meta["image_size"], *normalization(meta["backbone"]))
    names = meta["class_names"]
    on = next(model.parameters()).device
    for f in files:
        if "://" in str(f):
            yield str(f), f"{f}: URLs are not supported; download the image first"
            continue
        try:
            x = transform(data.open_image(f, resize_to=meta["image_size"]))[None]
        except CifarTLError as e:
            yield str(f), str(e)
            continue
        except MemoryError:
            yield str(f), f"{f}: too large to resize in the memory available"
            continue
        probs, idx = engine.predict(model, x, on, k)
        yield str(f), [(names[i], float(p)) for p, i in zip(probs[0].tolist(), idx[0].tolist())]
