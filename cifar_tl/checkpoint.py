"""Checkpoints of the head: a state_dict plus plain metadata under one checksum, loaded weights_only."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
import torchvision

from . import __version__
from .config import MAX_IMAGE_SIZE, Config
from .digests import (  # noqa: F401
    backbone_fingerprint,
    checksum_ok,
    stored_size_error,
    tensors_digest,
    weights_digest,
    with_checksum,
)
from .errors import AssetMissingError, CheckpointError, ConfigError, one_line
from .models import MLPHead, check_backbone
from .storage import atomic_save

FORMAT = "cifar_tl.head"
# 2: one checksum covers the metadata as well as the weights; weights from a file carry its digest.
FORMAT_VERSION = 2
# Weights named rather than given as a file: no file digest to store (the backbone fingerprint
# proves which weights a head was trained on).
NAMED_WEIGHTS = (None, "imagenet", "synthetic")
# Widths and class counts above this are damaged numbers, not models: refuse before allocating.
_MAX_WIDTH = 1 << 20
# What a file starts with, to say what it is when it is not a torch file (zip, or legacy pickle).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_OTHER_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                b"RIFF": "a WebP image or other RIFF file", b"BM": "a BMP image", b"%PDF": "a PDF document",
                b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image"}


# --------------------------------------------------------------------------- saving
def save_head(path: str | Path, head: MLPHead, **meta) -> Path:
    """Save the head's state_dict and everything needed to use it again (``head_blob``), atomically.
    Parent folders are created."""
    return atomic_save(head_blob(head, **meta), path)


def head_blob(head: MLPHead, *, config, class_names, coarse_classes=None, fine_to_coarse=None,
              metrics: dict | None = None, backbone_fingerprint: str | None = None) -> dict:
    """The head's state_dict and everything needed to use it again, under one checksum.

    Only tensors and plain Python values are stored, so ``torch.load(weights_only=True)``
    reads it on any machine (the tutorial pickled a whole module moved to 'cuda'). Backbone
    weights given as a file are stored as an absolute path with the file's sha256.
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    weights = cfg["weights"]
    if weights not in NAMED_WEIGHTS:
        weights = str(Path(weights).expanduser().resolve())
    state_dict = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state_dict,
        "backbone": cfg["backbone"],
        "weights": weights,
        "weights_sha256": weights_digest(weights) if weights not in NAMED_WEIGHTS else None,
        "image_size": int(cfg["image_size"]),
        "num_classes": int(head.num_classes),
        "feature_dim": int(head.in_dim),
        "hidden": [int(h) for h in head.hidden],
        "standardize": head.standardizer is not None,
        "class_names": [str(c) for c in class_names],
        "coarse_classes": None if coarse_classes is None else [str(c) for c in coarse_classes],
        "fine_to_coarse": None if fine_to_coarse is None else [int(c) for c in fine_to_coarse],
        "backbone_fingerprint": backbone_fingerprint,
        "config": cfg,
        "metrics": dict(metrics or {}),
        "versions": {"cifar_tl": __version__, "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__)},
    }
    return with_checksum(blob)


# --------------------------------------------------------------------------- loading
def load_file(path: str | Path, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` with every failure turned into one CheckpointError.

    ``weights_only=True`` means no code in the file can run: a pickled module or any other
    object is refused, not executed.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a {what} file (head.pt is inside a run folder)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what} file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty; save it again")
    _check_magic(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's multi-line notes about pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "global" in text.lower() or "unsupported" in text.lower():
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what_obj = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: it holds pickled Python objects{what_obj}, such as a whole nn.Module "
                "as the tutorial saved, which could run code when loaded; nothing in it was run. "
                "Load it only if you trust it, and re-save its state_dict"
            ) from None
        raise CheckpointError(f"{path}: not a readable {what} ({one_line(e, 100)})") from None
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    except Exception as e:  # RuntimeError (zip), EOFError, KeyError, ValueError ... of a cut file
        raise CheckpointError(
            f"{path}: truncated, damaged or not a torch {what} ({e.__class__.__name__}); copy or save it again"
        ) from None


def _check_magic(path: Path, what: str) -> None:
    """Refuse a file that does not even start like a torch file, saying what it looks like."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if head.startswith(_TORCH_MAGIC):
        return
    kind = next((k for magic, k in _OTHER_MAGIC.items() if head.startswith(magic)), None)
    if kind:
        hint = " (--checkpoint takes the head.pt a run saved; images come after it)" if what == "checkpoint" else ""
        raise CheckpointError(f"{path}: not a torch {what}: it is {kind}{hint}")
    raise CheckpointError(f"{path}: not a torch {what}: truncated, damaged or another kind of file; "
                          "copy or save it again")


def read_checkpoint(path: str | Path, blob: dict | None = None) -> dict:
    """Load a head checkpoint's contents safely and check every field, or raise CheckpointError.
    ``blob``: the contents already loaded (``load_file``), to check without reading again."""
    blob = load_file(path) if blob is None else blob
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cifar_tl head checkpoint (no '{FORMAT}' format tag)")
    version = blob.get("format_version")
    if not _int_in(version, 1, 10**6):
        raise CheckpointError(f"{path}: a cifar_tl checkpoint without a valid format version; save it again")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer cifar_tl (format {version}); upgrade cifar_tl")
    sd = check_tensors(blob.get("state_dict"), path)
    if not _checksum_ok(blob, version):
        raise CheckpointError(f"{path}: damaged: its weights or metadata do not match their checksum; "
                              "copy or save it again")
    for name, ok, expected in _field_checks(blob):
        if not ok:
            raise CheckpointError(f"{path}: a cifar_tl checkpoint with a damaged '{name}' field ({expected} "
                                  f"expected, got {one_line(repr(blob.get(name)), 60)}); save it again")
    dims = [blob["feature_dim"], *blob["hidden"], blob["num_classes"]]
    described = sum(a * b + b for a, b in zip(dims[:-1], dims[1:])) + 2 * dims[0] * blob["standardize"]
    if described != sum(t.numel() for t in sd.values()):  # checked before building the head it describes
        raise CheckpointError(f"{path}: its weights do not fit the head it describes ({described:,} numbers "
                              f"described, {sum(t.numel() for t in sd.values()):,} stored); save it again")
    _check_config(blob, path)
    return blob


def check_tensors(sd, path) -> dict:
    """``sd`` if it is a dict of named tensors, each within the bytes stored for it; else
    CheckpointError. Reads shapes and strides only, before any checksum touches the data."""
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: its state_dict holds something other than named tensors")
    for name, t in sd.items():
        if (why := stored_size_error(name, t)) is not None:
            raise CheckpointError(f"{path}: damaged: {why}; copy or save it again")
    return sd


def _checksum_ok(blob: dict, version: int) -> bool:
    if version == 1:  # before the metadata was covered: only the weights carry a checksum
        digest = blob.get("state_dict_sha256")
        return digest is None or digest == tensors_digest(blob["state_dict"])
    return checksum_ok(blob)


def _int_in(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _strings(v) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)


def _field_checks(b: dict) -> list[tuple[str, bool, str]]:
    """(field, valid?, what was expected) for every metadata field, in the order a reader needs them."""
    n = b.get("num_classes")
    coarse, f2c = b.get("coarse_classes"), b.get("fine_to_coarse")
    return [
        ("backbone", isinstance(b.get("backbone"), str) and re.fullmatch(r"[\w.]{1,100}", b["backbone"])
         is not None, "a model name"),
        ("weights", b.get("weights") is None or isinstance(b["weights"], str), "None, 'imagenet', 'synthetic' or a path"),
        ("weights_sha256", b.get("weights_sha256") is None or (isinstance(b["weights_sha256"], str)
                                                              and re.fullmatch(r"[0-9a-f]{64}", b["weights_sha256"])
                                                              is not None), "a sha256 digest"),
        ("image_size", _int_in(b.get("image_size"), 1, MAX_IMAGE_SIZE), f"an integer from 1 to {MAX_IMAGE_SIZE}"),
        ("num_classes", _int_in(n, 1, _MAX_WIDTH), "a positive number of classes"),
        ("feature_dim", _int_in(b.get("feature_dim"), 1, _MAX_WIDTH), "a positive feature width"),
        ("hidden", isinstance(b.get("hidden"), (list, tuple))
         and all(_int_in(h, 1, _MAX_WIDTH) for h in b["hidden"]), "a list of positive layer widths"),
        ("standardize", isinstance(b.get("standardize"), bool), "true or false"),
        ("class_names", _strings(b.get("class_names")) and len(b["class_names"]) == n,
         f"{n!r} class names (strings)"),
        ("coarse_classes", coarse is None or _strings(coarse), "None or a list of strings"),
        ("fine_to_coarse", f2c is None or (isinstance(f2c, (list, tuple)) and len(f2c) == n and _strings(coarse)
                                           and all(_int_in(c, 0, len(coarse) - 1) for c in f2c)),
         "None or one coarse class index per class"),
        ("backbone_fingerprint", b.get("backbone_fingerprint") is None or isinstance(b["backbone_fingerprint"], str),
         "None or a digest"),
        ("config", isinstance(b.get("config"), dict), "a dict"),
        ("metrics", isinstance(b.get("metrics", {}), dict), "a dict"),
        ("versions", isinstance(b.get("versions", {}), dict), "a dict"),
    ]


def _check_config(blob: dict, path) -> None:
    """The stored config must be one a run could use, and agree with the fields beside it."""
    try:
        cfg = Config.from_dict(blob["config"]).validate()
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as e:  # any value, any type
        raise CheckpointError(f"{path}: its stored config is damaged ({one_line(e, 120)}); save it again") from None
    # The fields save_head copied from the config, put back into it, must change nothing.
    as_saved = cfg.replace(backbone=blob["backbone"], image_size=blob["image_size"], weights=blob["weights"])
    diff = cfg.diff(as_saved, roles=("model",))
    if diff:
        raise CheckpointError(f"{path}: damaged: its stored config disagrees with its metadata "
                              f"({Config.describe_diff(diff, 'config has', 'metadata')}); save it again")


def check_weights_file(meta: dict, path="checkpoint") -> None:
    """A head trained on backbone weights from a file needs that very file: here, and unchanged.

    Raises:
        AssetMissingError: the file is not on this machine.
        CheckpointError: the file's sha256 is not the one stored when the head was trained.
    """
    weights = meta.get("weights")
    if weights in NAMED_WEIGHTS:
        return
    if not Path(weights).is_file():
        raise AssetMissingError(f"{path} was trained on backbone weights from {weights}, which is not "
                                "on this machine: copy that file to the same path")
    expected, found = meta.get("weights_sha256"), weights_digest(weights, cached=False)
    if expected and found != expected:
        raise CheckpointError(f"{path}: the weights file changed since this head was trained: {weights} has "
                              f"sha256 {found[:12]}..., the head was trained on {expected[:12]}...: restore "
                              "that file or train a new head")


def known_backbone(name: str, path="checkpoint") -> str:
    """``name`` when this torchvision has that backbone; else CheckpointError naming the file."""
    try:
        return check_backbone(name)
    except ConfigError:
        raise CheckpointError(f"{path}: made for a backbone {name!r} that this torchvision does not "
                              "have; upgrade torchvision") from None


def check_compatible(blob: dict, path="checkpoint", **expected) -> None:
    """Raise CheckpointError listing every field in ``expected`` that the checkpoint contradicts."""
    diffs = [
        f"{k}: checkpoint has {blob.get(k)!r}, expected {v!r}"
        for k, v in expected.items()
        if v is not None and blob.get(k) != v
    ]
    if diffs:
        raise CheckpointError(f"{path} does not fit this model: " + "; ".join(diffs))


def load_head(path: str | Path, *, blob: dict | None = None, **expected) -> tuple[MLPHead, dict]:
    """Rebuild the head from a checkpoint (``blob``: its contents, if already loaded). Keyword
    arguments (backbone=, num_classes=, image_size=, feature_dim=, weights=) are checked against
    its metadata first.

    Returns (head on the CPU in eval mode, metadata dict).
    """
    blob = read_checkpoint(path, blob)
    check_compatible(blob, path, **expected)
    try:
        head = MLPHead(blob["feature_dim"], blob["num_classes"], tuple(blob["hidden"]), blob["standardize"])
        head.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: its weights do not fit the head it describes ({one_line(e, 120)})") from None
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return head.eval(), meta


__all__ = ["FORMAT", "FORMAT_VERSION", "backbone_fingerprint", "check_compatible", "check_tensors", "check_weights_file",
           "checksum_ok", "head_blob", "known_backbone", "load_file", "load_head", "read_checkpoint", "save_head",
           "weights_digest", "with_checksum"]
