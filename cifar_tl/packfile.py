"""The feature pack's file: safetensors tensors and one JSON metadata entry under one checksum,
read back checked. What a pack holds and how it is made and used: ``pack``.

safetensors holds no pickle: nothing in a pack can run code. A damaged, truncated or foreign file
is refused in one line (DataError), never loaded, and a changed byte fails the checksum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from . import storage
from .errors import DataError, one_line

FORMAT = "cifar_tl.pack"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
META_KEY, SUM_KEY = "cifar_tl.pack", "cifar_tl.sha256"
SPLITS = ("train", "val", "test")
STORED = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"PK\x03\x04": "a zip or torch file (a head.pt?)", b"\x80": "a pickle", b"%PDF": "a PDF document"}


# --------------------------------------------------------------------------- writing
def write(path: str | Path, tensors: dict, meta: dict) -> Path:
    """The safetensors file of ``tensors`` and ``meta`` under one checksum, written atomically."""
    from safetensors.torch import save

    text = json.dumps(meta, sort_keys=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    content = save(tensors, {META_KEY: text, SUM_KEY: _checksum(tensors, text)})
    return storage.write_bytes(path, content)


def _checksum(tensors: dict, text: str) -> str:
    """The sha256 of named tensors (in name order: their names, dtypes, shapes and bytes), then ``text``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        _hash_tensor(h, name, tensors[name])
    h.update(text.encode())
    return h.hexdigest()


def _hash_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.contiguous()
    h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
    h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")


# --------------------------------------------------------------------------- reading one
class PackSplit:
    """One split of a pack in the dataset contract's terms (``classes``, ``targets``, the coarse
    labels, ``split``), with its ``features`` [N, V, D] (float32), ``labels`` [N] and ``index`` in place of images."""

    data = paths = None

    def __init__(self, meta: dict, split: str, feats: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
        self.meta, self.split, self.features, self.index = meta, split, feats, index
        self.labels, self.classes, self.targets = labels, list(meta["class_names"]), labels.tolist()
        self.coarse_classes, self.fine_to_coarse = meta.get("coarse_classes"), meta.get("fine_to_coarse")
        f2c = self.fine_to_coarse
        self.coarse_targets = None if f2c is None else [f2c[t] for t in self.targets]

    def __len__(self) -> int:
        return len(self.targets)

    def raw_image(self, index: int):
        raise DataError("a feature pack holds no images: evaluate and predict need the images")


def read_meta(path: str | Path) -> dict:
    """The metadata of a pack, from its header alone (fast: no features are read), checked.
    Raises DataError, in one line, for anything that is not a whole cifar_tl pack."""
    return _header(path)[0]


def _header(path) -> tuple[dict, str, str, set]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such feature pack" + (" (a folder)" if path.is_dir() else ""))
    try:
        with safe_open(str(path), framework="pt") as f:
            header, keys = f.metadata() or {}, set(f.keys())
    except Exception as e:  # safetensors' own error for any malformed file, OSError ...
        raise DataError(f"{path}: not a feature pack: {_what_is(path, e)}") from None
    if META_KEY not in header or SUM_KEY not in header:
        raise DataError(f"{path}: a safetensors file, but not a cifar_tl feature pack (no '{META_KEY}' "
                        "entry): make one with `python -m cifar_tl pack`")
    try:
        meta = json.loads(header[META_KEY])
        _check_meta(meta, keys)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise DataError(f"{path}: a damaged feature pack ({one_line(e, 100)}); copy it again") from None
    return meta, header[META_KEY], header[SUM_KEY], keys


def _what_is(path: Path, e: Exception) -> str:
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    kind = next((k for magic, k in _MAGIC.items() if start.startswith(magic)), None)
    if kind:
        return f"it is {kind} (nothing in it was run)"
    return f"truncated, damaged or another kind of file ({one_line(e, 80)}); copy it again"


# Each metadata field a reader relies on, with its type.
_META_TYPES = [("backbone", str), ("engine", str), ("precision", str), ("device", str),
               ("backbone_fingerprint", str), ("feature_dim", int), ("image_size", int), ("config", dict)]


def _check_meta(meta: dict, keys: set) -> None:
    """Raise ValueError naming the first field a reader cannot trust."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"format tag {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {meta.get('format_version')!r}, this cifar_tl reads {FORMAT_VERSION}")
    names, splits = meta["class_names"], meta["splits"]
    if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        raise ValueError("class names")
    if not (isinstance(splits, dict) and {"train", "test"} <= set(splits) <= set(SPLITS)):
        raise ValueError("splits")
    wanted = {f"{s}.{part}" for s in splits for part in ("features", "labels", "index")}
    if wanted != keys:
        raise ValueError(f"tensors {sorted(keys ^ wanted)}")
    for field, kind in _META_TYPES:
        if not isinstance(meta[field], kind):
            raise ValueError(field)


def load(path: str | Path) -> dict[str, PackSplit | None]:
    """Every split of a pack: {"train", "val", "test"} -> ``PackSplit`` (val None when the pack has
    none), features in float32. The checksum is verified: a pack that changed by one byte since it
    was made is refused, never used."""
    from safetensors import safe_open

    meta, text, checksum, _ = _header(path)
    h, tensors, stored = hashlib.sha256(), {}, {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in sorted(f.keys()):  # one stored tensor at a time beside the float32 ones
                t = f.get_tensor(name)
                _hash_tensor(h, name, t)
                stored[name] = t.dtype
                tensors[name] = t.float() if name.endswith(".features") and t.dtype in STORED.values() else t
    except Exception as e:  # changed since the header was read, unreadable
        raise DataError(f"{path}: not a feature pack: {_what_is(Path(path), e)}") from None
    h.update(text.encode())
    if h.hexdigest() != checksum:
        raise DataError(f"{path}: damaged: its features or metadata do not match their checksum; copy it again")
    return {s: _split(meta, s, tensors, stored, path) if s in meta["splits"] else None for s in SPLITS}


def _split(meta: dict, name: str, tensors: dict, stored: dict, path) -> PackSplit:
    f, y, idx = (tensors.pop(f"{name}.{p}") for p in ("features", "labels", "index"))
    n, c = len(y), len(meta["class_names"])
    views = 2 if name == "train" else 1  # both flips of a training image, one view of the others
    ok = (tuple(f.shape) == (n, views, meta["feature_dim"]) and stored[f"{name}.features"] in STORED.values()
          and y.dtype == idx.dtype == torch.long and idx.shape == y.shape == (n,) and meta["splits"][name]["n"] == n
          and (n == 0 or 0 <= int(y.min()) <= int(y.max()) < c))
    if not ok or not torch.isfinite(f).all():
        raise DataError(f"{path}: damaged: its {name} split's features or labels are not what its metadata says")
    return PackSplit(meta, name, f, y, idx)


