"""Image folders (--source folder:PATH): layouts, classes matched by name, debris, links, one format list."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_tl import data, images
from cifar_tl.config import Config
from cifar_tl.errors import AssetMissingError, ConfigError, DataError, ImageError

from .conftest import ONE_THREAD, run_cli

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "cats": (90, 60, 30),
           "dogs": (30, 60, 90), "a": (10, 10, 10), "b": (200, 200, 200), "c": (100, 0, 100)}


def photos(root: Path, layout: dict[str, int], suffix: str = ".png") -> Path:
    """Tiny PNGs: {"train/red": 4, ...} makes train/red/0.png ... 3.png, coloured by class."""
    for folder, n in layout.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (12 + i, 10), COLOURS.get(d.name, (i * 30, 0, 0))).save(d / f"{i}{suffix}")
    return root


def run(tmp_path, source, *extra, env=None, timeout=300):
    """The user's command on a folder, seconds-scale (random resnet18, 32 px, one epoch)."""
    return run_cli("run", "--profile", "smoke", "--source", source, "--weights", "none", "--backbone", "resnet18",
                   "--image-size", "32", "--epochs", "1", "--quiet", "--out", tmp_path / "out",
                   "--data-root", tmp_path / "data", *extra, env={**ONE_THREAD, **(env or {})}, timeout=timeout)


def refused(proc, tmp_path, needle, code=1):
    """Exit code, one error line holding needle, no traceback, and nothing trained or written."""
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "head.pt").exists()


def split(path, train, seed=0):
    return data.image_folder(path, train=train, seed=seed)


def folder_names(ds):
    return [Path(p).parent.name for p in ds.paths]


# --------------------------------------------------------------------------- classes by name
def test_test_classes_are_matched_by_name_not_by_position(tmp_path):
    """train/{red,green,blue} + test/{red,blue}: each test image keeps its own class's index."""
    root = photos(tmp_path / "p", {"train/red": 3, "train/green": 3, "train/blue": 3, "test/red": 2, "test/blue": 2})
    train, test = split(root, True), split(root, False)
    assert train.classes == test.classes == ["blue", "green", "red"]
    assert [test.classes[t] for t in test.targets] == folder_names(test) == ["blue"] * 2 + ["red"] * 2
    assert [train.classes[t] for t in train.targets] == folder_names(train)


def test_a_training_class_missing_from_test_is_reported_and_the_run_works(tmp_path):
    root = photos(tmp_path / "p", {"train/red": 3, "train/green": 3, "train/blue": 3, "test/red": 2, "test/blue": 2})
    proc = run(tmp_path, f"folder:{root}")
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr  # notices: where the CLI shows them
    assert "1 of 3 classes have no test images" in said and "green" in said
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_test"] == 4


def test_a_test_class_missing_from_training_is_refused(tmp_path):
    root = photos(tmp_path / "p", {"train/red": 3, "train/blue": 3, "test/red": 2, "test/green": 2})
    refused(run(tmp_path, f"folder:{root}"), tmp_path,
            "class folder(s) green hold test images, but training has no class of that name")


# --------------------------------------------------------------------------- layouts
def test_val_is_not_the_test_split(tmp_path):
    """val/ is the validation split (data.build_datasets); the test split is test/, else held out of train/."""
    root = photos(tmp_path / "p", {"train/a": 5, "train/b": 5, "val/a": 1, "val/b": 2})
    test = split(root, False)
    assert len(test) == 2 and all(Path(p).parts[-3] == "train" for p in test.paths)
    assert len(split(root, True)) == 8
    photos(root, {"test/a": 1})
    assert all(Path(p).parts[-3] == "test" for p in split(root, False).paths)
    assert len(split(root, True)) == 10


@pytest.mark.parametrize("layout", ["flat", "train only"])
def test_without_a_test_folder_a_seeded_stratified_split_is_held_out(tmp_path, layout):
    prefix = "" if layout == "flat" else "train/"
    root = photos(tmp_path / "p", {f"{prefix}a": 10, f"{prefix}b": 5, f"{prefix}c": 2})
    train, test = split(root, True), split(root, False)
    assert train.classes == test.classes == ["a", "b", "c"]  # never one class named "train"
    assert np.bincount(test.targets).tolist() == [2, 1, 1]  # 20% of each class, at least one
    assert np.bincount(train.targets).tolist() == [8, 4, 1]  # at least one left to train on
    assert not set(train.paths) & set(test.paths) and len(set(train.paths) | set(test.paths)) == 17
    assert split(root, False).paths == test.paths  # seeded: the same every run
    assert any(split(root, False, seed=s).paths != test.paths for s in range(1, 5))


def test_the_held_out_split_is_announced(tmp_path):
    root = photos(tmp_path / "p", {"train/a": 5, "train/b": 5})
    proc = run(tmp_path, f"folder:{root}")
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "has no test/ folder: holding out 20% of each class's images" in said
    assert said.count("holding out") == 1  # said once, not once per split


def test_a_class_with_one_image_cannot_be_held_out(tmp_path):
    root = photos(tmp_path / "p", {"a": 3, "b": 1})
    with pytest.raises(DataError, match="class 'b' has only 1 image: at least 2 are needed"):
        split(root, True)


def test_test_without_train_is_refused(tmp_path):
    root = photos(tmp_path / "p", {"test/a": 2, "test/b": 2})
    with pytest.raises(DataError, match="has test/ but no train/"):
        split(root, True)


# --------------------------------------------------------------------------- debris and links
def test_hidden_names_and_os_debris_are_ignored(tmp_path):
    root = photos(tmp_path / "p", {"cats": 3, "dogs": 3, ".ipynb_checkpoints": 2, "__MACOSX": 2, ".git": 1,
                                   "cats/.thumbnails": 2, "dogs/__MACOSX": 1})
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._0.png", ".hidden.png"):
        (root / "cats" / name).write_bytes(b"\x00\x05\x16\x07 debris")
    train, test = split(root, True), split(root, False)
    assert train.classes == ["cats", "dogs"]
    everything = train.paths + test.paths
    assert len(everything) == 6 and all(Path(p).name in ("0.png", "1.png", "2.png") for p in everything)
    assert all(Path(p).parent.parent == root for p in everything)


def test_symlink_loops_neither_hang_nor_duplicate_images(tmp_path):
    root = photos(tmp_path / "p", {"cats": 3, "dogs": 3, "dogs/more": 2})
    os.symlink(root, root / "cats" / "loop")  # back to the top: cats/loop/cats/loop/...
    os.symlink(".", root / "dogs" / "self")
    os.symlink("..", root / "dogs" / "more" / "up")  # a loop through a subfolder
    os.symlink("0.png", root / "cats" / "again.png")  # the same file twice
    os.symlink(root / "missing.png", root / "cats" / "broken.png")
    os.symlink(root / "cats", root / "dogs" / "cats")  # another class: its images are not dogs
    proc = run(tmp_path, f"folder:{root}", timeout=120)  # first, in a subprocess: a hang fails, not hangs
    assert proc.returncode == 0, proc.stderr
    train, test = split(root, True), split(root, False)
    names = folder_names(train) + folder_names(test)
    assert len(names) == 8 and len(set(map(os.path.realpath, train.paths + test.paths))) == 8


# --------------------------------------------------------------------------- the path itself
def test_an_empty_folder_path_is_a_bad_argument_not_the_current_folder(tmp_path):
    refused(run(tmp_path, "folder:"), tmp_path, "needs a path", code=2)
    with pytest.raises(ConfigError):
        split("", True)


def test_tilde_means_the_home_folder(tmp_path, monkeypatch):
    photos(tmp_path / "home" / "photos", {"a": 3, "b": 3})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert split("~/photos", True).root == tmp_path / "home" / "photos"
    proc = run(tmp_path, "folder:~/photos", env={"HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr


def test_a_file_is_said_to_be_a_file_and_a_missing_folder_missing(tmp_path):
    photo = photos(tmp_path, {"x": 1}) / "x" / "0.png"
    refused(run(tmp_path, f"folder:{photo}"), tmp_path, f"image folder {photo} is a file, not a folder")
    with pytest.raises(AssetMissingError, match="does not exist"):
        split(tmp_path / "nowhere", True)


# --------------------------------------------------------------------------- too few images
def test_a_class_without_training_images_is_refused_before_training(tmp_path):
    root = photos(tmp_path / "p", {"train/a": 3, "train/b": 0, "test/a": 1})
    (root / "train" / "b" / "notes.txt").write_text("no pictures here")
    refused(run(tmp_path, f"folder:{root}"), tmp_path, f"{root / 'train' / 'b'}: a class folder without images")


def test_fewer_training_images_than_classes_is_refused_before_training(tmp_path):
    root = photos(tmp_path / "p", {"train/a": 3, "train/b": 3, "train/c": 3, "test/a": 1})
    refused(run(tmp_path, f"folder:{root}", "--train-size", "2"), tmp_path,
            "--train-size 2 is fewer than one image per class (3 classes): use --train-size 3 or more")


def test_a_test_folder_without_images_is_refused(tmp_path):
    root = photos(tmp_path / "p", {"train/a": 3, "train/b": 3, "test/a": 0})
    with pytest.raises(DataError, match="no test images"):
        split(root, False)


# --------------------------------------------------------------------------- formats and sizes
def test_one_list_of_formats_for_training_and_predict(tmp_path):
    root = tmp_path / "p"
    for suffix in (".gif", ".webp", ".JPG", ".bmp", ".tiff"):
        photos(root, {"a": 2, "b": 2}, suffix=suffix)
    for name in ("0.txt", "0.heic"):
        (root / "a" / name).write_bytes(b"not a supported image")
    everything = split(root, True).paths + split(root, False).paths
    assert sorted({Path(p).suffix for p in everything}) == [".JPG", ".bmp", ".gif", ".tiff", ".webp"]
    assert len(everything) == 20
    for p in everything:  # what trains, predicts
        assert Path(p).suffix.lower() in images.IMAGE_SUFFIXES and images.open_image(p).mode == "RGB"
    for name in ("0.txt", "0.heic"):  # what does not, is refused by predict in one line
        with pytest.raises(ImageError, match=r"not a supported image type \(\.(txt|heic)\)"):
            images.open_image(root / "a" / name)


def test_an_elongated_image_is_refused_before_it_is_resized(tmp_path):
    """1 x 200,000 px decodes in 0.6 MB, but resized to 32 px on its shorter side it would be
    32 x 6,400,000 px (614 MB): refused by size, before any memory is spent."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 200_000), (9, 9, 9)).save(path)
    with pytest.raises(ImageError) as e:
        images.open_image(path, resize_to=32)
    assert str(e.value).startswith(f"{path}: 1x200000 px would be 32x6400000 px") and "\n" not in str(e.value)
    im = images.open_image(path)  # without a size: opened; the transform refuses it, naming the file
    for transform in (data.eval_transform(32), data.train_transform(32)):
        with pytest.raises(ImageError, match=str(path)):
            transform(im)
    with pytest.raises(ImageError, match=str(path)):  # the fast path's lazy folder decoding too
        images.FolderImages([path], 32)[0:1]
    with pytest.raises(ImageError):
        images.check_resized_size(1, 1_000_000, 300)
    images.check_resized_size(6000, 4000, 300)  # a 24 MP photo is fine
    images.check_resized_size(100, 7000, 300)  # 300 x 21,000 px = 6.3 MP: fine


def test_a_folder_source_gives_its_images_as_uint8_slices(tmp_path):
    root = photos(tmp_path / "p", {"a": 3, "b": 3})
    ds = data.build_source(Config(source=f"folder:{root}", train_size=2, test_size=None), train=True)
    x = images.images_uint8(ds, 16)
    assert isinstance(x, images.FolderImages) and x.paths == ds.paths and x.shape == (2, 3, 16, 16)
    batch = x[0:2]
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 16, 16)
    expected = data.eval_transform(16).transforms[0](ds.raw_image(1))  # the tutorial's resize + crop
    expected = data.eval_transform(16).transforms[1](expected)
    assert torch.equal(batch[1], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
