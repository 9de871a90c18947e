"""The image-folder source: finding photos in folders, the split layout, classes matched by name.

Layouts: ``PATH/train/<class>/...`` with ``PATH/test/<class>/...``, or class folders alone
(``PATH/<class>/...`` or ``PATH/train/<class>/...``), from which a seeded, class-stratified part is
held out for testing. A ``PATH/val/<class>/...`` beside ``train/`` is the validation split. Images may sit in subfolders of a class folder. Hidden names and OS
debris are ignored, symlinks are followed once. Test classes are matched to training classes by
name, so both splits use one class index.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import AssetMissingError, ConfigError, DataError
from .images import IMAGE_SUFFIXES, open_image

log = logging.getLogger(__name__)
HELD_OUT = ("test",)  # the name of the held-out (test) split
VAL = "val"  # the name of the validation split

# Files and folders that operating systems, archivers and tools leave beside photos. Names
# starting with a dot (.DS_Store, .ipynb_checkpoints, .git, ._photo.jpg) are ignored as well.
IGNORED_NAMES = frozenset(n.lower() for n in ("__MACOSX", "Thumbs.db", "ehthumbs.db", "desktop.ini",
                                               "Icon\r", "$RECYCLE.BIN", "System Volume Information",
                                               "__pycache__", "@eaDir", "lost+found"))


# --------------------------------------------------------------------------- finding images
def ignored(name: str) -> bool:
    """Hidden names (starting with a dot) and the usual OS and tool debris."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of folder (symlinks to folders included), sorted by name."""
    return [p for p in _entries(folder) if p.is_dir()]


def find_images(folder: Path, avoid: frozenset[str] = frozenset()) -> tuple[list[str], int]:
    """Every supported image file under folder, recursively, sorted; and how many other files were skipped.

    Symlinks are followed, but each real folder is entered once and each real file listed once:
    a link loop (``a/loop -> ..``) neither hangs nor duplicates images. Folders in ``avoid`` (real
    paths: the dataset's root, splits and other classes) are not entered through links.
    """
    found, skipped, seen_files = [], 0, set()
    seen_dirs = {os.path.realpath(folder), *avoid}
    stack = [folder]
    while stack:
        d = stack.pop()
        entries = _entries(d)
        for p in reversed(entries):  # depth first, in name order
            if p.is_dir():
                real = os.path.realpath(p)
                if real not in seen_dirs:
                    seen_dirs.add(real)
                    stack.append(p)
        for p in entries:
            if not p.is_file():  # broken links, sockets ...
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            real = os.path.realpath(p)
            if real not in seen_files:
                seen_files.add(real)
                found.append(str(p))
    return sorted(found), skipped


def _entries(folder: Path) -> list[Path]:
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except OSError as e:
        raise DataError(f"{folder}: cannot be read ({e.strerror or e.__class__.__name__})") from None
    return [folder / n for n in names if not ignored(n)]


# --------------------------------------------------------------------------- the dataset
class ImageFolderSource(torch.utils.data.Dataset):
    """Image files with class indices (made by ``image_folder``), following ``cifar_tl.data``'s contract."""

    def __init__(self, root: Path, split: str, classes: list[str], paths: list[str], targets: list[int],
                 transform=None):
        self.root, self.split, self.transform = Path(root), split, transform
        self.classes, self.paths, self.targets = list(classes), list(paths), [int(t) for t in targets]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.data = None  # photos differ in size: decoded one at a time from ``paths``
        self.coarse_classes = self.coarse_targets = self.fine_to_coarse = None

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, class index) pairs, as torchvision's ImageFolder names them."""
        return list(zip(self.paths, self.targets))

    def raw_image(self, index: int) -> Image.Image:
        return open_image(self.paths[index])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = self.raw_image(index)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


# --------------------------------------------------------------------------- the splits
def image_folder(path: str | Path, train: bool, seed: int = 0, test_fraction: float = 0.2) -> ImageFolderSource:
    """One split of a folder of your own photos (see the module docstring for the layouts).

    Notices (logging) say which split was held out and which classes have no test images; they
    are given with the test split, so once per run.

    Raises:
        ConfigError: an empty path.
        AssetMissingError: the folder does not exist.
        DataError: a file instead of a folder, no class folders, a class without images, a test
            class that training does not have, a class too small to hold an image out.
    """
    if not str(path).strip():
        raise ConfigError("--source folder: needs a path: folder:PATH")
    root = Path(path).expanduser()
    if not root.exists():
        raise AssetMissingError(f"image folder {root} does not exist: pass --source folder:PATH")
    if not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder: pass the folder that holds "
                        "one folder of images per class")
    train_dir, test_dir = _layout(root, announce=not train)
    # Links may lead anywhere but back up the tree or into another class or split.
    tops = [root, train_dir, *([test_dir] if test_dir else [])]
    avoid = frozenset(os.path.realpath(p) for top in tops for p in [top, *subfolders(top)])
    found = _classes(train_dir, avoid)
    classes = sorted(found)
    if test_dir is None:
        if not train:
            log.info("%s has no test/ folder: holding out %.0f%% of each class's images for "
                     "testing (seeded, the same every run)", root, 100 * test_fraction)
        items = _hold_out(found, classes, seed, test_fraction, train)
    else:
        items = _match(found, classes, test_dir, train, avoid)
    paths, targets = (list(x) for x in zip(*items)) if items else ([], [])
    return ImageFolderSource(root, "train" if train else "test", classes, paths, targets)


def val_folder(path: str | Path, classes: list[str]) -> ImageFolderSource | None:
    """The validation split of a folder source: its ``val/`` beside ``train/``, classes matched by
    name to the training ``classes``; None when there is no ``val/``."""
    root = Path(path).expanduser()
    val_dir = next((p for p in subfolders(root) if p.name == VAL), None) if root.is_dir() else None
    if val_dir is None or not (root / "train").is_dir():
        return None
    avoid = frozenset(os.path.realpath(p) for top in (root, val_dir) for p in [top, *subfolders(top)])
    found = {c: [] for c in classes}
    items = _match(found, classes, val_dir, False, avoid)
    paths, targets = (list(x) for x in zip(*items)) if items else ([], [])
    return ImageFolderSource(root, "val", classes, paths, targets)


def _layout(root: Path, announce: bool) -> tuple[Path, Path | None]:
    """(training folder, held-out folder or None)."""
    dirs = {p.name: p for p in subfolders(root)}
    held = next((dirs[n] for n in HELD_OUT if n in dirs), None)
    if "train" not in dirs:
        if held is not None or VAL in dirs:
            held = held or dirs[VAL]
            raise DataError(f"{root} has {held.name}/ but no train/: put the training images in "
                            f"{root / 'train'}/<class>/")
        return root, None
    others = sorted(set(dirs) - {"train", VAL, *HELD_OUT})
    if announce and others:
        log.info("%s: using train/ and %s; not used: %s", root, f"{held.name}/" if held else "no held-out folder",
                 ", ".join(f"{n}/" for n in others[:5]))
    return dirs["train"], held


def class_name(folder: Path) -> str:
    """A class folder's name in Unicode NFC: a macOS copy (NFD) names the same class as Linux's."""
    return unicodedata.normalize("NFC", folder.name)


def _by_class(folder: Path) -> dict[str, Path]:
    """{class name: its folder}. Two folders whose names differ only in Unicode form or in spaces
    would print as one class: refused, their names shown with repr."""
    dirs, loose = {}, {}
    for d in subfolders(folder):
        key = " ".join(class_name(d).split())
        if key in loose:
            raise DataError(f"{folder}: the class folders {loose[key].name!r} and {d.name!r} differ only in "
                            "spaces or in how their letters are encoded (Unicode form): merge or rename them")
        dirs[class_name(d)] = loose[key] = d
    return dirs


def _classes(folder: Path, avoid: frozenset[str]) -> dict[str, list[str]]:
    """{class name: its image files} of one split folder; every class must have an image."""
    dirs = _by_class(folder)
    if not dirs:
        raise DataError(f"{folder}: no class folders: put each class's images in a folder named after "
                        f"the class ({folder}/<class>/<image>)")
    found = {c: find_images(d, avoid)[0] for c, d in dirs.items()}
    empty = [c for c, files in found.items() if not files]
    if empty:
        raise DataError(f"{dirs[empty[0]]}: a class folder without images of a supported type "
                        f"({', '.join(IMAGE_SUFFIXES)}): add some or remove the folder")
    return found


def _shown(name: str) -> str:
    """A class name as printed in messages: with repr when spaces or invisible characters matter."""
    return repr(name) if name != name.strip() or not name.isprintable() else name


def _near(name: str, classes: list[str]) -> str:
    """' (training has 'cat')' when a class differs from ``name`` only by spaces or case."""
    key = " ".join(name.split()).casefold()
    near = [c for c in classes if " ".join(c.split()).casefold() == key]
    return f" (training has {near[0]!r})" if near else ""


def _match(train_found: dict, classes: list[str], test_dir: Path, train: bool,
           avoid: frozenset[str]) -> list[tuple[str, int]]:
    """(file, class index) of one split when test/ exists: classes matched by name."""
    test_found = {c: find_images(d, avoid)[0] for c, d in _by_class(test_dir).items()}
    test_found = {c: files for c, files in test_found.items() if files}
    unknown = sorted(set(test_found) - set(classes))
    if unknown:  # repr where a trailing space or an invisible character matters
        shown = ", ".join(f"{_shown(c)}{_near(c, classes)}" for c in unknown[:5])
        raise DataError(f"{test_dir}: class folder(s) {shown} hold test images, but training "
                        f"has no class of that name (classes are matched by name): rename or remove them")
    if not test_found:
        raise DataError(f"{test_dir}: no test images in class folders ({test_dir}/<class>/<image>)")
    missing = [c for c in classes if c not in test_found]
    if missing and not train:
        log.info("%d of %d classes have no test images in %s (they are trained, not tested): %s",
                 len(missing), len(classes), test_dir, ", ".join(map(_shown, missing[:5])))
    split = train_found if train else test_found
    return [(f, i) for i, c in enumerate(classes) for f in split.get(c, [])]


def _hold_out(found: dict, classes: list[str], seed: int, fraction: float, train: bool) -> list[tuple[str, int]]:
    """(file, class index) of one split, made by holding out a seeded fraction of every class."""
    rng = np.random.default_rng(seed)
    items = []
    for i, c in enumerate(classes):
        files = found[c]
        if len(files) < 2:
            raise DataError(f"class {c!r} has only 1 image: at least 2 are needed to hold one out for "
                            "testing (add images, or a test/ folder beside train/)")
        k = min(len(files) - 1, max(1, round(len(files) * fraction)))
        held = set(rng.permutation(len(files))[:k].tolist())
        items += [(f, i) for j, f in enumerate(files) if (j in held) != train]
    return items
