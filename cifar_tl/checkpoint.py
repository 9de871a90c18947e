"""Checkpoints of the head: a state_dict plus plain metadata, saved atomically, loaded weights_only."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
import torchvision

from .errors import CheckpointError
from .features import atomic_torch_save
from .models import MLPHead

FORMAT = "cifar_tl.head"
FORMAT_VERSION = 1
# The fields that must agree between a checkpoint and the model or data it is used with.
COMPATIBILITY_FIELDS = ("backbone", "weights", "image_size", "num_classes", "feature_dim")


def _version() -> str:
    from . import __version__

    return __version__


def save_head(path: str | Path, head: MLPHead, *, config, class_names, coarse_classes=None,
              fine_to_coarse=None, metrics: dict | None = None) -> Path:
    """Save the head's state_dict and everything needed to use it again, atomically.

    Only tensors and plain Python values are stored, so ``torch.load(weights_only=True)``
    reads it on any machine (the tutorial pickled a whole module moved to 'cuda').
    Parent folders are created.
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "backbone": cfg["backbone"],
        "weights": None if cfg["weights"] is None else str(cfg["weights"]),
        "image_size": int(cfg["image_size"]),
        "num_classes": int(head.num_classes),
        "feature_dim": int(head.in_dim),
        "hidden": [int(h) for h in head.hidden],
        "standardize": head.standardizer is not None,
        "class_names": [str(c) for c in class_names],
        "coarse_classes": None if coarse_classes is None else [str(c) for c in coarse_classes],
        "fine_to_coarse": None if fine_to_coarse is None else [int(c) for c in fine_to_coarse],
        "config": cfg,
        "metrics": dict(metrics or {}),
        "versions": {"cifar_tl": _version(), "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__)},
    }
    path = Path(path)
    atomic_torch_save(blob, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's contents safely, or raise CheckpointError in one line.

    ``weights_only=True`` means no code in the file can run: a pickled module or any other
    object is refused, not executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "Weights only load failed" in first or "Unsupported" in str(e) or "global" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused: it holds pickled Python objects (such as a whole nn.Module, as "
                "the tutorial saved) that could run code when loaded; save a state_dict instead"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({first[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: truncated or not a torch checkpoint ({e.__class__.__name__}); save it again"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cifar_tl head checkpoint (no '{FORMAT}' format tag)")
    if blob.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer cifar_tl (format {blob['format_version']}); upgrade cifar_tl"
        )
    return blob


def check_compatible(blob: dict, path="checkpoint", **expected) -> None:
    """Raise CheckpointError listing every field in ``expected`` that the checkpoint contradicts."""
    diffs = [
        f"{k}: checkpoint has {blob.get(k)!r}, expected {v!r}"
        for k, v in expected.items()
        if v is not None and blob.get(k) != v
    ]
    if diffs:
        raise CheckpointError(f"{path} does not fit this model: " + "; ".join(diffs))


def load_head(path: str | Path, **expected) -> tuple[MLPHead, dict]:
    """Rebuild the head from a checkpoint. Keyword arguments (backbone=, num_classes=,
    image_size=, feature_dim=, weights=) are checked against its metadata first.

    Returns (head on the CPU in eval mode, metadata dict).
    """
    blob = read_checkpoint(path)
    check_compatible(blob, path, **expected)
    head = MLPHead(blob["feature_dim"], blob["num_classes"], tuple(blob["hidden"]), blob["standardize"])
    try:
        head.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the head it describes ({str(e).splitlines()[0]})") from None
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return head.eval(), meta
