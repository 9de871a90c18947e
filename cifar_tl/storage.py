"""The one crash-safe writer: temp file + fsync + rename, for torch and JSON files; writability probes.

Every file the package writes (checkpoints, training state, the feature cache, metrics and
history) goes through ``atomic_save`` or ``write_json``: readers never see half a file, a crash
(even ``kill -9``) leaves the previous file intact, and a full disk is one line, not a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import StorageError, one_line

__all__ = ["STALE_TEMP_SECONDS", "atomic_save", "check_writable", "remove_stale_temps", "write_bytes",
           "write_json"]

# Temp files are named after the host and process that write them, so that a later save can tell
# a dead writer's leftovers from a file another process is writing right now (a shared folder).
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
STALE_TEMP_SECONDS = 24 * 3600
# Below this many free bytes, a write that failed without saying why is taken as a full disk.
_NEARLY_FULL = 1 << 20


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temp file beside it, fsync, then rename.

    What a crash can leave is the temp file ``.NAME.<host>-<pid>.<random>.tmp``; the next
    successful save of the same file removes it once its writer is gone. Unlike ``mkstemp``, the
    file gets the usual permissions (the umask), so classmates on a shared machine can read it.

    Raises:
        StorageError: the file cannot be written (full disk, read-only folder ...); one line,
            and the previous file at ``path`` is unchanged.
    """
    return _write_atomic(path, lambda f: torch.save(obj, f))


def write_json(path: str | Path, obj, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON, atomically (as ``atomic_save``).

    Non-finite floats (NaN, infinity: a diverged loss) are written as ``null``: Python's default
    writes a bare ``NaN``, which is not JSON and which other JSON readers refuse.
    """
    text = json.dumps(_finite(obj), indent=indent, allow_nan=False) + "\n"
    return _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_bytes(path: str | Path, content: bytes) -> Path:
    """Write ``content`` to ``path`` atomically (as ``atomic_save``): a feature pack's file."""
    return _write_atomic(path, lambda f: f.write(content))


def _finite(obj):
    """A copy of obj (dicts, lists, tuples, numbers) with NaN and infinities replaced by None."""
    if isinstance(obj, float):  # numpy's float64 is a float subclass
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return _finite(obj.item())
    return obj


def check_writable(folder: str | Path) -> Path:
    """Make ``folder`` (and its parents) and prove a file can be created in it.

    Call it before long work whose result must be saved there, so that a read-only or missing
    folder is said at the start, not after an hour of training.

    Raises:
        StorageError: one line naming the folder and why.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"cannot write to {folder}: it is a file, not a folder; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".cifar_tl-probe-"):
            pass
    except OSError as e:
        raise StorageError(f"cannot write to {folder} ({_reason(e, folder)}): choose another "
                           "folder or fix its permissions") from None
    return folder


def _write_atomic(path: str | Path, write: Callable) -> Path:
    """Run ``write(binary file)`` on a temp file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder itself could not be made: there is no temp file
            pass
        # torch.save reports a full disk as RuntimeError ("unexpected pos ..."), not OSError.
        if isinstance(e, (OSError, RuntimeError)):
            raise StorageError(f"cannot write {path} ({_reason(e, path.parent)}): free some space or "
                               "choose another folder; the previous file is unchanged") from None
        raise
    _fsync_dir(path.parent)
    remove_stale_temps(path)
    return path


def _reason(e: BaseException, folder: Path) -> str:
    """Why a write failed, in a few words: the OSError behind it (torch chains it as the context
    of its RuntimeError), else a full disk if the disk is full, else the error's own text."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    if _free_bytes(folder) < _NEARLY_FULL:
        return os.strerror(errno.ENOSPC)
    return one_line(e, 80)


def _free_bytes(folder: Path) -> float:
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return math.inf


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
