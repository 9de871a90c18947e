"""The crash-safe writer: a full disk is one line and keeps the old file; JSON is strict; temps are cleaned."""

import errno
import json
import os
from collections import namedtuple

import numpy as np
import pytest
import torch

from cifar_tl import storage
from cifar_tl.errors import StorageError


def _full_disk_torch_save(obj, f, *args, **kwargs):
    """What torch.save does on a full disk: half a file, then a RuntimeError whose context is the
    OSError (measured on a 64 KB tmpfs: "[enforce fail at inline_container.cc:672] . unexpected pos")."""
    f.write(b"PK\x03\x04 half a zip")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def _assert_one_line_full_disk(e, path):
    msg = str(e.value)
    assert "\n" not in msg and f"cannot write {path} (No space left on device)" in msg, msg
    assert "the previous file is unchanged" in msg


def test_full_disk_in_torch_save_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = storage.atomic_save({"x": torch.arange(3)}, tmp_path / "head.pt")
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    with pytest.raises(StorageError) as e:
        storage.atomic_save({"x": torch.arange(5)}, path)
    _assert_one_line_full_disk(e, path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]  # no temp left


def test_a_runtime_error_without_cause_on_a_full_disk_says_so(tmp_path, monkeypatch):
    def fails(obj, f, *args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", fails)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(StorageError) as e:
        storage.atomic_save({}, tmp_path / "a.pt")
    _assert_one_line_full_disk(e, tmp_path / "a.pt")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: usage(10**9, 0, 10**9))
    with pytest.raises(StorageError, match="file write failed"):  # space left: say what torch said
        storage.atomic_save({}, tmp_path / "a.pt")


def test_full_disk_in_write_json_keeps_the_previous_file(tmp_path, monkeypatch):
    path = storage.write_json(tmp_path / "metrics.json", {"test_accuracy": 0.5})
    before = path.read_text()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # fsync reports ENOSPC on NFS

    monkeypatch.setattr(storage.os, "fsync", no_space)
    with pytest.raises(StorageError) as e:
        storage.write_json(path, {"test_accuracy": 0.9})
    _assert_one_line_full_disk(e, path)
    assert path.read_text() == before and sorted(tmp_path.iterdir()) == [path]


def test_an_interrupted_save_keeps_the_previous_file_and_is_not_a_storage_error(tmp_path, monkeypatch):
    path = storage.atomic_save([1], tmp_path / "state.pt")
    before = path.read_bytes()

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_save([2], path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def _strict(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_is_strict_json_with_null_for_non_finite_numbers(tmp_path):
    obj = {"loss": float("nan"), "best": float("inf"), "worst": -float("inf"), "ok": 0.25, "n": 3,
           "rows": [{"loss": np.float32("nan")}, (1.0, float("nan"))], "np": np.float64(0.5),
           "t": torch.tensor(float("inf")), "name": "a\nb", "flag": True, "none": None}
    text = storage.write_json(tmp_path / "m.json", obj).read_text()
    back = _strict(text)  # no bare NaN / Infinity anywhere
    assert back == {"loss": None, "best": None, "worst": None, "ok": 0.25, "n": 3,
                    "rows": [{"loss": None}, [1.0, None]], "np": 0.5, "t": None, "name": "a\nb",
                    "flag": True, "none": None}


def test_saved_files_replace_the_old_one_whole(tmp_path):
    path = storage.write_json(tmp_path / "deep" / "er" / "h.json", {"v": 1})  # parents made
    storage.write_json(path, {"v": 2})
    assert _strict(path.read_text()) == {"v": 2} and sorted(path.parent.iterdir()) == [path]


def test_check_writable_makes_the_folder_and_refuses_in_one_line(tmp_path):
    assert storage.check_writable(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe leaves nothing behind
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(StorageError) as e:
        storage.check_writable(blocker)
    assert "\n" not in str(e.value) and f"cannot write to {blocker}: it is a file" in str(e.value)
    with pytest.raises(StorageError) as e:  # as root, chmod cannot make a folder read-only: use a file
        storage.check_writable(blocker / "sub")
    assert "\n" not in str(e.value) and f"cannot write to {blocker / 'sub'} (Not a directory)" in str(e.value)


def test_check_writable_probes_an_existing_folder(tmp_path, monkeypatch):
    """A folder that exists but refuses new files (a read-only mount): the probe file finds out."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(storage.tempfile, "TemporaryFile", read_only)
    with pytest.raises(StorageError, match=r"cannot write to .* \(Read-only file system\)"):
        storage.check_writable(tmp_path)


def test_stale_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    path = tmp_path / "head.pt"
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    dead = tmp_path / f".head.pt.{storage._HOST}-{dead_pid}.0a0b0c0d.tmp"
    live = tmp_path / f".head.pt.{storage._HOST}-{os.getpid()}.0a0b0c0d.tmp"
    other_host = tmp_path / f".head.pt.ffffff-{dead_pid}.0a0b0c0d.tmp"
    unrelated = tmp_path / ".other.pt.tmp"
    for p in (dead, live, other_host, unrelated):
        p.write_bytes(b"x")
    storage.atomic_save({}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (path, live, other_host, unrelated))
