"""Checkpoints of the head: a state_dict plus plain metadata, saved atomically, loaded weights_only."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import secrets
import socket
import time
import warnings
from pathlib import Path

import torch
import torchvision

from .errors import CheckpointError, CifarTLError, one_line
from .models import MLPHead

FORMAT = "cifar_tl.head"
FORMAT_VERSION = 1
# The fields that must agree between a checkpoint and the model or data it is used with.
COMPATIBILITY_FIELDS = ("backbone", "weights", "image_size", "num_classes", "feature_dim")
# Fields a head checkpoint must have, with their types: anything else is refused, not guessed at.
_REQUIRED = {"state_dict": dict, "backbone": str, "image_size": int, "num_classes": int,
             "feature_dim": int, "hidden": (list, tuple), "standardize": bool,
             "class_names": (list, tuple), "config": dict}


def _version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------- atomic writes
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
STALE_TEMP_SECONDS = 24 * 3600


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over ``path``.

    Readers never see half a file and a crash (even ``kill -9``) leaves the previous file intact.
    What a crash can leave is the temp file ``.NAME.<host>-<pid>.<random>.tmp``; the next
    successful save of the same file removes it once its writer is gone. Unlike ``mkstemp``,
    the file gets the usual permissions (the umask), so classmates on a shared machine can read it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder itself could not be made: there is no temp file
            pass
        if isinstance(e, OSError):
            raise CifarTLError(f"cannot write {path} ({e.strerror or one_line(e, 80)}): free some "
                               "space or choose another folder; the previous file is unchanged") from None
        raise
    _fsync_dir(path.parent)
    remove_stale_temps(path)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would *send* Ctrl-C on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temp files that crashed saves of ``path`` left behind. A temp file is stale
    when its writer (same host) is no longer running, or when it is over a day old. Returns them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]+)-(\d+)\.[0-9a-f]+\.tmp")
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir()
                      if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for tmp in candidates:
        m = pattern.fullmatch(tmp.name)
        try:
            dead = m is not None and m.group(1) == _HOST and not _alive(int(m.group(2)))
            if dead or time.time() - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- head checkpoints
def _tensors_digest(tensors: dict) -> str:
    """A hash of named tensors' values (torch's zip reader does not check its CRCs: a flipped
    byte in a copied file would otherwise load as silently wrong weights)."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of the backbone's weights and buffers. Stored with the head, it proves at load time
    that the backbone rebuilt for evaluate/predict is the one the head was trained on (a random
    backbone is rebuilt from the run's seed; a torch version with another initialisation would
    silently give different features)."""
    return _tensors_digest(backbone.state_dict())


def save_head(path: str | Path, head: MLPHead, *, config, class_names, coarse_classes=None,
              fine_to_coarse=None, metrics: dict | None = None,
              backbone_fingerprint: str | None = None) -> Path:
    """Save the head's state_dict and everything needed to use it again, atomically.

    Only tensors and plain Python values are stored, so ``torch.load(weights_only=True)``
    reads it on any machine (the tutorial pickled a whole module moved to 'cuda').
    Parent folders are created.
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    state_dict = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state_dict,
        "state_dict_sha256": _tensors_digest(state_dict),
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
        "backbone_fingerprint": backbone_fingerprint,
        "config": cfg,
        "metrics": dict(metrics or {}),
        "versions": {"cifar_tl": _version(), "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__)},
    }
    return atomic_save(blob, path)


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


def read_checkpoint(path: str | Path) -> dict:
    """Load a head checkpoint's contents safely and check its fields, or raise CheckpointError."""
    blob = load_file(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cifar_tl head checkpoint (no '{FORMAT}' format tag)")
    version = blob.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: a cifar_tl checkpoint without a valid format version; save it again")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer cifar_tl (format {version}); upgrade cifar_tl")
    for name, kind in _REQUIRED.items():
        if not isinstance(blob.get(name), kind) or (kind is int and isinstance(blob[name], bool)):
            raise CheckpointError(f"{path}: a cifar_tl checkpoint with a missing or damaged "
                                  f"'{name}' field; save it again")
    if not all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values()):
        raise CheckpointError(f"{path}: its state_dict holds something other than tensors")
    digest = blob.get("state_dict_sha256")
    if digest is not None and digest != _tensors_digest(blob["state_dict"]):
        raise CheckpointError(f"{path}: damaged: its weights do not match their checksum; copy or save it again")
    if len(blob["class_names"]) != blob["num_classes"]:
        raise CheckpointError(f"{path}: {len(blob['class_names'])} class names for "
                              f"{blob['num_classes']} classes; save it again")
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
    try:
        head = MLPHead(blob["feature_dim"], blob["num_classes"], tuple(blob["hidden"]), blob["standardize"])
        head.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: its weights do not fit the head it describes ({one_line(e, 120)})") from None
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return head.eval(), meta
