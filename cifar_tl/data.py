"""Data: the sources (CIFAR-100, synthetic, image folder) behind one dataset contract, the
tutorial's transforms, collate_fn and loaders.

The dataset contract. Every source is a torch ``Dataset`` of (PIL image, label) pairs, passed
through ``transform`` when one is set, and carries, set in its own class:

- ``classes``: the class names; ``targets``: one class index per sample;
- ``coarse_classes``, ``coarse_targets``, ``fine_to_coarse``: superclasses, or None where the
  source has none (image folders);
- ``split``: "train", "val" or "test";
- ``data``: the images as uint8 [N, H, W, 3] for fixed-size sources (CIFAR-100, synthetic), None
  for folders; ``paths``: the image files of a folder source, None for the others;
- ``raw_image(i)``: sample i as stored, before any transform (a uint8 HWC array or an RGB PIL image).

A subset (``--train-size``) is a ``Subset`` that keeps the contract, never an edited dataset.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torchvision import transforms as T

from .backbones import normalization
from .errors import AssetMissingError, ConfigError, DataError, StorageError, one_line
from .folders import ImageFolderSource, image_folder, val_folder
from .images import BoundedResize, open_image, to_rgb  # noqa: F401  (data.open_image: notebooks use it)
from .storage import check_writable
from .subset import Subset
from .synthetic import SyntheticCIFAR

log = logging.getLogger(__name__)

# The ImageNet statistics the pretrained backbones were trained with (the tutorial's Normalize).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCE_SYNTAX = "cifar100, synthetic, synthetic-sketch or folder:PATH"


@lru_cache(maxsize=1)
def cifar100_meta() -> dict:
    """CIFAR-100's 100 fine names (torchvision order), 20 coarse names and the fine->coarse map."""
    return json.loads(resources.files("cifar_tl").joinpath("cifar100.json").read_text())


# --------------------------------------------------------------------------- transforms
def train_transform(image_size: int = 300, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The tutorial's training transform: resize, random horizontal flip, tensor, normalise.

    ``CenterCrop`` is a no-op on CIFAR's square images; it makes non-square photos (the folder
    source) square, because ``Resize(300)`` with one number only sets the *shorter* side. The
    resize refuses an image too elongated to resize in memory (``images.check_resized_size``).
    """
    return T.Compose(
        [
            BoundedResize(image_size),
            T.CenterCrop(image_size),
            T.RandomHorizontalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
        ]
    )


def eval_transform(image_size: int = 300, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The same without the random flip: evaluation must be deterministic (the tutorial's bug 1).
    ``mean``/``std``: ImageNet's, the tutorial's; pass the backbone's (``models.normalization``)."""
    return T.Compose(
        [
            BoundedResize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
        ]
    )


def collate_fn(data: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's collate function: a list of (image, label) pairs -> (images [B,3,H,W], labels [B])."""
    x = [i[0] for i in data]
    y = [i[1] for i in data]
    return torch.stack(x), torch.LongTensor(y)


# --------------------------------------------------------------------------- datasets
class CIFAR100(torchvision.datasets.CIFAR100):
    """torchvision's CIFAR100 with the dataset contract: coarse labels, ``split``, ``raw_image``."""

    def __init__(self, root: str | Path, train: bool = True, transform=None, download: bool = False):
        super().__init__(root=str(root), train=train, transform=transform, download=download)
        meta = cifar100_meta()
        self.split = "train" if train else "test"
        self.coarse_classes: list[str] = list(meta["coarse"])
        self.fine_to_coarse: list[int] = list(meta["fine_to_coarse"])
        self.coarse_targets: list[int] = [self.fine_to_coarse[t] for t in self.targets]
        self.paths = None

    def raw_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as stored: uint8 [32, 32, 3]."""
        return self.data[index]


# --------------------------------------------------------------------------- sources
def balanced_indices(targets, n: int, seed=0, keep: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset of size n (as equal per class as possible), deterministic.

    ``seed`` is an int or a sequence of ints (an independent stream per purpose). ``keep`` images
    of every class are never chosen (a validation split leaves training one image per class).
    """
    targets = np.asarray(targets)
    classes = np.unique(targets)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in classes]
    per_class = [p[: max(len(p) - keep, 0)] for p in per_class]
    chosen, k = [], 0
    while len(chosen) < n and any(k < len(p) for p in per_class):
        chosen.extend(int(p[k]) for p in per_class if k < len(p))
        k += 1
    return np.sort(np.array(chosen[:n], dtype=np.int64))


def cifar100(root: str | Path, train: bool, download: bool = True) -> CIFAR100:
    """CIFAR-100 with coarse labels; a one-line AssetMissingError when it cannot be had."""
    root = Path(root)
    try:
        return CIFAR100(root, train=train)
    except OSError as e:  # present but unreadable (permissions, a damaged disk)
        raise AssetMissingError(
            f"CIFAR-100 in {root} cannot be read ({e.strerror or e.__class__.__name__}): fix its "
            "permissions, or set CIFAR_TL_DATA or --data-root to another folder"
        ) from None
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise AssetMissingError(
                f"CIFAR-100 is not in {root}: run `python -m cifar_tl download --root {shlex.quote(str(root.parent))}` "
                "on a machine with internet, or use --profile smoke (offline synthetic data)"
            ) from None
    try:  # say that the folder cannot be written now, not halfway through the download
        check_writable(root)
    except StorageError as e:
        raise AssetMissingError(
            f"CIFAR-100 is not in {root}, and that folder cannot be written to download it ({e}): set "
            "CIFAR_TL_DATA or --data-root to a writable folder, or copy a cifar100/ folder made by "
            "`python -m cifar_tl download` there, or use --profile smoke (offline synthetic data)"
        ) from None
    try:
        with warnings.catch_warnings(), _socket_timeout(60):
            warnings.simplefilter("ignore")
            return CIFAR100(root, train=train, download=True)
    except Exception as e:  # URLError, socket errors, timeouts, checksum failures, full disk
        raise AssetMissingError(
            f"CIFAR-100 is not in {root} and could not be downloaded ({e.__class__.__name__}: "
            f"{one_line(e, 120)}): run `python -m cifar_tl download` on a machine with internet "
            f"and copy the folder to {root} (or set CIFAR_TL_DATA), or use --profile smoke "
            "(offline synthetic data)"
        ) from None


@contextmanager
def _socket_timeout(seconds: float):
    """A stalled network (a classroom proxy, a captive portal) fails after ``seconds`` instead of hanging."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _cifar100_source(cfg, train: bool, download: bool, arg: str) -> CIFAR100:
    return cifar100(Path(cfg.data_root) / "cifar100", train=train, download=download)


def _synthetic_source(cfg, train: bool, download: bool, arg: str, style: str = "photo") -> SyntheticCIFAR:
    size = cfg.train_size if train else cfg.test_size
    per_class = -(-size // 100) if size else (500 if train else 100)
    return SyntheticCIFAR(train=train, n_per_class=per_class, seed=cfg.seed, style=style)


def _sketch_source(cfg, train: bool, download: bool, arg: str) -> SyntheticCIFAR:
    """The synthetic classes drawn as outlines on paper: a shifted domain for fine-tuning."""
    return _synthetic_source(cfg, train, download, arg, style="sketch")


def _folder_source(cfg, train: bool, download: bool, arg: str) -> ImageFolderSource:
    return image_folder(arg, train=train, seed=cfg.seed)


# name -> builder(cfg, train, download, argument after "name:"): every builder returns a whole
# split that follows the dataset contract.
SOURCES: dict[str, Callable] = {"cifar100": _cifar100_source, "synthetic": _synthetic_source,
                                "synthetic-sketch": _sketch_source, "folder": _folder_source}


def check_source(source) -> tuple[str, str]:
    """(name, argument) of a ``--source`` value, or a one-line ConfigError."""
    if not isinstance(source, str):
        raise ConfigError(f"source must be {SOURCE_SYNTAX}, got {source!r}")
    name, sep, arg = source.partition(":")
    if name not in SOURCES or (sep and name != "folder"):
        raise ConfigError(f"unknown source {source!r}; choose {SOURCE_SYNTAX}")
    if name == "folder" and not arg.strip():
        raise ConfigError("--source folder: needs a path: folder:PATH, a folder of class folders "
                          "(or with train/ and test/ or val/ inside)")
    return name, arg


def build_source(cfg, train: bool, download: bool = True):
    """The dataset named by ``cfg.source`` for one split, subset to ``cfg.train_size/test_size``.

    Items are (PIL image, label) until a transform is set; see the module's dataset contract.
    Raises DataError when the split cannot train or test every class (a size below one image
    per class, a class without a training image).
    """
    name, arg = check_source(cfg.source)
    ds = SOURCES[name](cfg, train, download, arg)
    size = cfg.train_size if train else cfg.test_size
    _check_split(ds, size)
    if size is not None and size < len(ds):
        ds = Subset(ds, balanced_indices(ds.targets, size, seed=cfg.seed))
    return ds


def _check_split(ds, size: int | None) -> None:
    """Refuse a split that leaves a class untrained (a NaN head) or holds less than one image per class."""
    counts = np.bincount(np.asarray(ds.targets, dtype=np.int64), minlength=len(ds.classes))
    present = int((counts > 0).sum())
    option = "--train-size" if ds.split == "train" else "--test-size"
    if present == 0:
        raise DataError(f"the {ds.split} split has no images")
    if ds.split == "train" and present < len(ds.classes):
        empty = [ds.classes[c] for c in np.flatnonzero(counts == 0)]
        raise DataError(f"the training split has no image of {len(empty)} class(es): {', '.join(empty[:5])}")
    if size is not None and size < present:
        raise DataError(f"{option} {size} is fewer than one image per class ({present} classes): "
                        f"use {option} {present} or more")


class Splits(NamedTuple):
    """The three splits of a run: ``train`` trains, ``val`` (None without one) judges every
    choice, ``test`` is evaluated once, at the end."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    test: torch.utils.data.Dataset


def hold_out_val(train_ds, n: int, seed: int, strict: bool = True):
    """(train, val): ``n`` class-balanced images of ``train_ds`` held out as the validation split,
    seeded (its own stream of ``seed``), leaving training at least one image of every class.
    Both are ``Subset``s of the source itself; ``n=0`` gives (train_ds, None). When fewer than
    ``n`` can be spared: DataError if ``strict`` (``--val-size`` asked for them), else as many
    as can be, and none with a notice."""
    if n == 0:
        return train_ds, None
    base, index = (train_ds.dataset, np.asarray(train_ds.indices)) if isinstance(train_ds, Subset) \
        else (train_ds, np.arange(len(train_ds)))
    held = balanced_indices(train_ds.targets, n, seed=[seed, 1], keep=1)
    if len(held) == 0 and not strict:
        log.info("no validation split: every class has only one training image (use a larger --train-size)")
        return train_ds, None
    if len(held) < n and strict:
        raise DataError(f"--val-size {n} is more than the training split can spare: at most {len(held)} of its "
                        f"{len(train_ds)} images, keeping one image of every class for training")
    rest = np.setdiff1d(np.arange(len(train_ds)), held)
    return Subset(base, index[rest]), Subset(base, index[held], split="val")


def build_datasets(cfg, download: bool = True) -> Splits:
    """The train, validation and test splits with the tutorial's transforms: flip for train, none
    for validation and test.

    Validation is an image folder's own ``val/`` when it has one (all of it, or none with
    ``val_size=0``), else ``cfg.val_count`` images held out of the training subset
    (``hold_out_val``). Raises DataError when a split cannot be made.
    """
    train_ds = build_source(cfg, train=True, download=download)
    test_ds = build_source(cfg, train=False, download=download)
    name, arg = check_source(cfg.source)
    own = val_folder(arg, train_ds.classes) if name == "folder" and cfg.val_size != 0 else None
    if own is not None:
        val_ds = own
    else:
        train_ds, val_ds = hold_out_val(train_ds, cfg.val_count(len(train_ds)), cfg.seed,
                                        strict=cfg.val_size is not None)
    norm = normalization(cfg.backbone)  # the weights' own mean and std
    train_ds.transform = train_transform(cfg.image_size, *norm)
    for ds in (val_ds, test_ds):
        if ds is not None:
            ds.transform = eval_transform(cfg.image_size, *norm)
    return Splits(train_ds, val_ds, test_ds)


def make_loader(dataset, batch_size: int, train: bool, seed: int = 0, num_workers: int = 0):
    """The tutorial's DataLoader, made correct for evaluation.

    train: shuffled by a seeded generator (reproducible), last partial batch dropped as in the
    tutorial. test: in order, nothing dropped, so every test image is seen exactly once.
    """
    generator = torch.Generator().manual_seed(seed) if train else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        collate_fn=collate_fn,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
