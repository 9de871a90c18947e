"""Digests of checkpoints, backbones and weight files: the checksums that prove files unchanged."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch


def stored_size_error(name: str, t: torch.Tensor) -> str | None:
    """Why tensor ``t`` does not fit the bytes stored for it, or None. A tensor read from a file
    is a view on its stored bytes: ``zeros(1).expand(100000, 100000)`` stores 4 bytes and claims
    10**10 numbers, which a copy (``.contiguous()``) would materialise as 40 GB. Read from the
    shape and strides only: no data is touched."""
    stored = t.untyped_storage().nbytes() // max(t.element_size(), 1) - t.storage_offset()
    if t.numel() > stored:
        return f"tensor {name!r} claims {t.numel():,} numbers of shape {tuple(t.shape)} but stores {max(stored, 0):,}"
    return None


def tensors_digest(tensors: dict) -> str:
    """A hash of named tensors' values (torch's zip reader does not check its CRCs: a flipped
    byte in a copied file would otherwise load as silently wrong weights). ValueError for a tensor
    that claims more numbers than it stores (``stored_size_error``): it is refused, not copied."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu()
        if (why := stored_size_error(name, t)) is not None:
            raise ValueError(why)
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())  # at most the stored bytes (checked above)
    return h.hexdigest()[:24]


def checksum(blob: dict) -> str:
    """A hash of the whole checkpoint: the weights and every metadata field (an edited
    ``image_size`` is damage as much as a flipped weight)."""
    meta = {k: v for k, v in blob.items() if k not in ("state_dict", "sha256")}
    text = json.dumps(meta, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode() + tensors_digest(blob["state_dict"]).encode()).hexdigest()[:32]


def with_checksum(blob: dict) -> dict:
    """``blob`` with its checksum (re)computed: what ``save_head`` stores."""
    return {**blob, "sha256": checksum(blob)}


def checksum_ok(blob: dict) -> bool:
    """Whether ``blob`` carries the checksum of its own contents (``with_checksum``)."""
    try:
        return blob.get("sha256") == checksum(blob)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):  # not even describable
        return False


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of the backbone's weights and buffers. Stored with the head, it proves at load time
    that the backbone rebuilt for evaluate/predict is the one the head was trained on (a random
    backbone is rebuilt from the run's seed; a torch version with another initialisation would
    silently give different features)."""
    return tensors_digest(backbone.state_dict())


def weights_digest(path: str | Path, cached: bool = True) -> str:
    """The sha256 of a weights file. ``cached``: remembered per (path, size, modification time),
    as saving a head every epoch would otherwise hash the same file every epoch."""
    path = Path(path).expanduser().resolve()
    if not cached:
        return _file_digest.__wrapped__(str(path), 0, 0)
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
