"""A run's folder: the marker that names it as a run's and lists the files the run wrote, the
lock that claims it while a run writes into it, and reading its small files safely."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .errors import CifarTLError, StorageError

log = logging.getLogger(__name__)

# A run folder holds this file: it names the folder as ours and lists every file the run wrote,
# so a new run in the same folder removes those and nothing else.
MARKER = ".cifar_tl-run.json"
MARKER_FORMAT = "cifar_tl.run"
# Made with an exclusive create while a run writes into its folder (and removed when it ends):
# a second run into the same folder is refused instead of mixing or deleting the first one's files.
LOCK = ".cifar_tl-run.lock"


def quoted(path) -> str:
    """A path as it can be pasted into a shell (quoted when it holds spaces or other specials)."""
    return shlex.quote(str(path))


def regular(path: Path) -> bool | None:
    """True for a regular file (not a link), False for anything else there, None when nothing is."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return False


def read_text(path: Path) -> str:
    """The text of a regular file; OSError for anything else (a FIFO would block a plain read)."""
    if not regular(path):
        raise OSError(f"{path} is not a regular file")
    return path.read_text()


def written_files(out: Path) -> list[str] | None:
    """The files an earlier run in ``out`` wrote, or None when ``out`` is not a run folder."""
    try:
        m = json.loads(read_text(out / MARKER))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != MARKER_FORMAT or not isinstance(m.get("files"), list):
        return None
    # Only plain names inside the folder: a damaged marker must not point anywhere else.
    return [f for f in m["files"] if isinstance(f, str) and f and Path(f).name == f and f not in
            (".", "..", MARKER, LOCK) and "\0" not in f and "/" not in f and "\\" not in f]


def remove_run_files(out: Path) -> None:
    """Remove the files an earlier run in ``out`` wrote, and its marker. A listed name that is not
    a regular file (a folder, a link, a FIFO: the marker is damaged) is left alone, with a notice."""
    for name in written_files(out) or ():
        kind = regular(out / name)
        if kind:
            (out / name).unlink(missing_ok=True)
        elif kind is False:
            log.info("note: %s is listed as a file of the earlier run, but is not a regular file: "
                     "left alone", out / name)
    (out / MARKER).unlink(missing_ok=True)


@dataclass
class Claim:
    """A run's hold on its folder (``claim``); ``release`` when the run ends, however it ends."""

    out: Path
    created: bool
    token: str

    def release(self) -> None:
        """Remove the lock (if it is still this run's), and the folder if the run made it and
        wrote nothing: a run that failed at the start leaves no empty folder behind."""
        lock = self.out / LOCK
        try:
            if json.loads(read_text(lock)).get("token") == self.token:
                lock.unlink()
        except (OSError, ValueError, AttributeError):
            pass
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass  # not empty: it holds the run


def claim(out: Path, resume: bool, overwrite: bool) -> Claim:
    """Check that ``out`` can take this run and claim it, before any long work.

    The claim is an exclusive create of ``out/LOCK``: of two runs started into one folder, the
    second is refused in one line, so neither can mix or delete the other's files. A lock left by
    a process of this machine that is gone (kill -9) is taken over with a notice.
    """
    if out.is_symlink() and not out.exists():
        raise StorageError(f"--out {out} is a link to {os.readlink(out)}, which does not exist: "
                           "create that folder, or choose another --out")
    if out.exists() and not out.is_dir():
        raise StorageError(f"--out {out} is a file, not a folder: choose another --out")
    created = not out.exists()
    storage.check_writable(out)
    c = Claim(out, created, _lock(out))
    try:
        if regular(out / MARKER) is False:
            raise CifarTLError(f"{out / MARKER} is not a file (the run folder is damaged): remove it, "
                               "or choose another --out")
        if not resume and not overwrite:
            _check_free(out)
    except BaseException:
        c.release()
        raise
    return c


def _check_free(out: Path) -> None:
    if written_files(out) is not None:
        raise CifarTLError(f"{out} already holds a run: continue it with `python -m cifar_tl run "
                           f"--resume {quoted(out)}`, replace it with --overwrite, or choose another --out")
    if any(p.name != LOCK for p in out.iterdir()):
        raise CifarTLError(f"{out} is not empty and is not a cifar_tl run folder: choose a new or "
                           "empty --out, or write into it anyway with --overwrite (files of the "
                           "same names as a run's would be replaced; nothing else is touched)")


def _lock(out: Path) -> str:
    """Create ``out/LOCK`` exclusively and return its token; CifarTLError when another run holds it."""
    path, token = out / LOCK, secrets.token_hex(8)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _holder(path)
            if attempt == 0 and holder.get("stale"):
                log.info("note: taking over %s: the run that claimed it (pid %s) is no longer running",
                         out, holder.get("pid"))
                path.unlink(missing_ok=True)
                continue
            raise CifarTLError(_held_message(out, holder)) from None
        except OSError as e:
            raise StorageError(f"cannot write to {out} ({e.strerror or e}): choose another folder or fix "
                               "its permissions") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return token
    raise CifarTLError(_held_message(out, _holder(path)))


def _holder(path: Path) -> dict:
    """What a lock says about its run, and whether that run is gone ("stale")."""
    if regular(path) is False:
        return {"damaged": True}
    try:
        h = json.loads(read_text(path))
        h = h if isinstance(h, dict) else {}
    except (OSError, ValueError):  # being written right now, or cut by a crash
        h = {}
    pid = h.get("pid")
    if h.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid():
        h["stale"] = not storage._alive(pid)  # noqa: SLF001
    elif not h:
        try:  # an unreadable lock older than a minute is a crash's leftover, not one being written
            h["stale"] = time.time() - path.stat().st_mtime > 60
        except OSError:
            pass
    return h


def _held_message(out: Path, holder: dict) -> str:
    if holder.get("damaged"):
        return f"{out / LOCK} is not a file (the run folder is damaged): remove it, or choose another --out"
    who = (f" (pid {holder['pid']} on {holder.get('host', 'another machine')}, started {holder.get('started', '?')})"
           if "pid" in holder else "")
    return (f"another run is writing to {out} right now{who}: wait until it ends, or choose another "
            f"--out; if no run is writing there, delete {quoted(out / LOCK)}")
