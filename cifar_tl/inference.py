"""Using a saved head: rebuild its model, evaluate it on a test split, predict image files."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, data, engine, features
from .config import Config, resolve_device
from .errors import AssetMissingError, CheckpointError, CifarTLError, one_line
from .features import FeatureLoader
from .models import BACKBONES, TransferModel, build_backbone
from .pipeline import validate

# Fields that describe the machine, not the model: evaluate uses this machine's values, not the
# trainer's (a classmate's checkpoint names their data folder and maybe their GPU).
MACHINE_FIELDS = ("data_root", "device", "progress", "num_workers", "extract_batch_size")

__all__ = ["evaluate_checkpoint", "load_model", "predict_files"]


def load_model(path: str | Path, device="cpu", weights=None) -> tuple[TransferModel, dict]:
    """The backbone the checkpoint was trained on, with its head: ready for evaluate/predict.

    A random backbone is rebuilt from the run's seed, and the checkpoint's backbone fingerprint
    proves it is the same one (else CheckpointError, not silently wrong predictions).
    """
    head, meta = checkpoint.load_head(path)
    name = meta["backbone"]
    if name not in BACKBONES:
        raise CheckpointError(f"{path}: made for a backbone {name!r} this cifar_tl does not know "
                              f"(known: {', '.join(BACKBONES)}); upgrade cifar_tl")
    weights = meta["weights"] if weights is None else weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise AssetMissingError(f"{path} was trained on backbone weights from {weights}, which is not "
                                "on this machine: copy that file to the same path")
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
            f"{made.get('torchvision')}; here {torch.__version__}, {_tv_version()}): use it with those "
            "versions, or train a new head here")
    return TransferModel(backbone, head).to(device).eval(), meta


def _tv_version() -> str:
    import torchvision

    return torchvision.__version__


def evaluate_checkpoint(path: str | Path, **overrides) -> dict:
    """Evaluate a saved head on the test split its config names.

    The model's settings (backbone, weights, image size, seed) come from the checkpoint, the
    machine's (data folder, device) from this machine; ``overrides`` may change the data
    (source, test_size, data_root ...). An override that contradicts the model is refused,
    naming each difference.
    """
    blob = checkpoint.read_checkpoint(path)
    try:
        trained = Config.from_dict(blob["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored config is damaged ({one_line(e, 80)})") from None
    here = Config()
    cfg = trained.replace(**{k: getattr(here, k) for k in MACHINE_FIELDS}).replace(**overrides)
    validate(cfg)
    diffs = [f"{k}: checkpoint has {blob.get(k)!r}, expected {getattr(cfg, k)!r}"
             for k in ("backbone", "weights", "image_size") if blob.get(k) != getattr(cfg, k)]
    if diffs:
        raise CheckpointError(f"{path} does not fit this model: {'; '.join(diffs)} "
                              "(evaluate takes the model's settings from the checkpoint: drop those options)")
    device = resolve_device(cfg.device)
    model, meta = load_model(path, device)
    test_ds = data.build_source(cfg, train=False)
    if len(test_ds.classes) != meta["num_classes"]:
        raise CheckpointError(f"{path} does not fit this data: num_classes: checkpoint has "
                              f"{meta['num_classes']}, {cfg.source} has {len(test_ds.classes)}")
    feats, targets, _ = features.cached_features(cfg, test_ds, model.backbone, device,
                                                 features.VIEWS_TEST, use_cache=cfg.cache)
    ev = engine.evaluate(model.head, FeatureLoader(feats, targets, 256, train=False, device=device),
                         device, cfg.progress)
    return {"test_accuracy": ev.accuracy, "test_top5": ev.top5, "n_test": ev.n, "source": cfg.source}


def predict_files(path: str | Path, files, device="cpu", k: int = 5):
    """Top-k predictions for image files. Returns [(file, [(class, prob), ...] or error string)].

    A file that cannot be read gets a one-line error string naming it; the others are predicted.
    """
    if isinstance(files, (str, Path)):
        files = [files]
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
        except MemoryError:
            results.append((str(f), f"{f}: too large to resize in the memory available"))
            continue
        probs, idx = engine.predict(model, x, next(model.parameters()).device, k)
        results.append((str(f), [(names[i], float(p)) for p, i in zip(probs[0].tolist(), idx[0].tolist())]))
    return results
