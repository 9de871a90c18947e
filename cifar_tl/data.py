"""Data: the sources (CIFAR-100, synthetic, image folder), the tutorial's transforms, collate_fn, loaders."""

from __future__ import annotations

import json
import re
import socket
import tempfile
import warnings
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torchvision import transforms as T

from .errors import AssetMissingError, ConfigError, ImageError, one_line
from .synthetic import FINE_TO_COARSE, SyntheticCIFAR

# The ImageNet statistics the pretrained backbones were trained with (the tutorial's Normalize).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("cifar100", "synthetic", "folder:PATH")


@lru_cache(maxsize=1)
def cifar100_meta() -> dict:
    """CIFAR-100's 100 fine names (torchvision order), 20 coarse names and the fine->coarse map."""
    return json.loads(resources.files("cifar_tl").joinpath("cifar100.json").read_text())


# --------------------------------------------------------------------------- transforms
def train_transform(image_size: int = 300) -> T.Compose:
    """The tutorial's training transform: resize, random horizontal flip, tensor, normalise.

    ``CenterCrop`` is a no-op on CIFAR's square images; it makes non-square photos (the folder
    source) square, because ``Resize(300)`` with one number only sets the *shorter* side.
    """
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.RandomHorizontalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int = 300) -> T.Compose:
    """The same without the random flip: evaluation must be deterministic (the tutorial's bug 1)."""
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def collate_fn(data: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's collate function: a list of (image, label) pairs -> (images [B,3,H,W], labels [B])."""
    x = [i[0] for i in data]
    y = [i[1] for i in data]
    return torch.stack(x), torch.LongTensor(y)


# --------------------------------------------------------------------------- images
def open_image(path: str | Path) -> Image.Image:
    """Open any image file as an upright 8-bit RGB PIL image, or raise ImageError naming the file.

    Handles grayscale, 16-bit, palette, CMYK, alpha (composited on white), EXIF rotation and
    animated files (first frame). Images above PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, 89 megapixels by default) are refused, not decoded.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on odd EXIF or metadata: the pixels are fine
            # PIL only warns between 1x and 2x its pixel limit: refuse there too, in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)  # animated GIF, WebP or PNG: the first frame
                return to_rgb(_upright(im))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(_too_large(path, e)) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or in a format PIL cannot read)") from None
    except PermissionError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror})") from None
    except Exception as e:  # truncated or corrupt data: whatever the decoder raised
        raise ImageError(
            f"{path}: not a readable image, truncated or damaged ({e.__class__.__name__}: {one_line(e, 120)})"
        ) from None


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store photos sideways and set a tag); a damaged EXIF
    block is ignored rather than refusing the picture."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def _too_large(path: Path, e: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS or 0
    return (f"{path}: {size}, more than the {limit / 1e6:.0f} megapixels PIL decodes safely (a guard "
            "against decompression bombs): shrink the image first, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (loading the pixels, so truncation errors surface here).

    16-bit grayscale is scaled, not clipped; float images are read as 0..1 (or 0..255); alpha
    (and palette transparency) is composited on white, as a viewer shows it.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        im = _gray8(np.asarray(im, dtype=np.float64) / 65535)
    elif im.mode == "I":  # 32-bit integers: PIL uses this mode for 8- and 16-bit data alike
        a = np.asarray(im, dtype=np.float64)
        im = _gray8(a / (65535.0 if a.max() > 255 else 255.0))
    elif im.mode == "F":
        with np.errstate(all="ignore"):
            a = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            im = _gray8(a if a.max() <= 1 else a / 255)
    elif im.mode == "La":  # premultiplied: PIL converts it only to LA
        im = im.convert("LA")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:  # a transparent colour
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    rgb = im.convert("RGB")
    rgb.load()
    return rgb


def _gray8(a: np.ndarray) -> Image.Image:
    """Values in [0, 1] (clipped) -> an 8-bit grayscale image."""
    return Image.fromarray((a.clip(0, 1) * 255).round().astype(np.uint8))


# --------------------------------------------------------------------------- sources
def balanced_indices(targets, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset of size n (as equal per class as possible), deterministic."""
    targets = np.asarray(targets)
    classes = np.unique(targets)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in classes]
    chosen, k = [], 0
    while len(chosen) < n and any(k < len(p) for p in per_class):
        chosen.extend(int(p[k]) for p in per_class if k < len(p))
        k += 1
    return np.sort(np.array(chosen[:n], dtype=np.int64))


def _take(ds, idx: np.ndarray):
    """Restrict a source to the indices idx, in place (keeping its attributes), and return it."""
    if getattr(ds, "data", None) is not None:
        ds.data = ds.data[idx]
    if hasattr(ds, "samples"):
        ds.samples = [ds.samples[i] for i in idx]
        ds.imgs = ds.samples
    ds.targets = [int(ds.targets[i]) for i in idx]
    if getattr(ds, "coarse_targets", None) is not None:
        ds.coarse_targets = [int(ds.coarse_targets[i]) for i in idx]
    return ds


def cifar100(root: str | Path, train: bool, download: bool = True):
    """torchvision's CIFAR100 with coarse labels; a one-line AssetMissingError when it cannot be had."""
    root = Path(root)
    try:
        ds = torchvision.datasets.CIFAR100(root=str(root), train=train, download=False)
    except OSError as e:  # present but unreadable (permissions, a damaged disk)
        raise AssetMissingError(
            f"CIFAR-100 in {root} cannot be read ({e.strerror or e.__class__.__name__}): fix its "
            "permissions, or set CIFAR_TL_DATA or --data-root to another folder"
        ) from None
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise AssetMissingError(
                f"CIFAR-100 is not in {root}: run `python -m cifar_tl download --root {root.parent}` "
                "on a machine with internet, or use --profile smoke (offline synthetic data)"
            ) from None
        _check_writable(root)
        try:
            with warnings.catch_warnings(), _socket_timeout(60):
                warnings.simplefilter("ignore")
                ds = torchvision.datasets.CIFAR100(root=str(root), train=train, download=True)
        except Exception as e:  # URLError, socket errors, timeouts, checksum failures, full disk
            raise AssetMissingError(
                f"CIFAR-100 is not in {root} and could not be downloaded ({e.__class__.__name__}: "
                f"{one_line(e, 120)}): run `python -m cifar_tl download` on a machine with internet "
                f"and copy the folder to {root} (or set CIFAR_TL_DATA), or use --profile smoke "
                "(offline synthetic data)"
            ) from None
    meta = cifar100_meta()
    ds.coarse_classes = list(meta["coarse"])
    ds.fine_to_coarse = list(meta["fine_to_coarse"])
    ds.coarse_targets = [ds.fine_to_coarse[t] for t in ds.targets]
    return ds


def _check_writable(root: Path) -> None:
    """Before a download: say in one line that the data folder cannot be written, rather than
    failing halfway through the download with an OSError."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise AssetMissingError(
            f"CIFAR-100 is not in {root}, and that folder cannot be written to download it "
            f"({e.strerror or e.__class__.__name__}): set CIFAR_TL_DATA or --data-root to a writable "
            "folder, or copy a cifar100/ folder made by `python -m cifar_tl download` there, or use "
            "--profile smoke (offline synthetic data)"
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


def image_folder(path: str | Path, train: bool, seed: int = 0, test_fraction: float = 0.2):
    """Your own photos: ``path/<class>/*.jpg``, or ``path/train/<class>/...`` + ``path/test/<class>/...``.

    Without train/ and test/ subfolders, a deterministic class-balanced 80/20 split is made.
    """
    path = Path(path)
    if not path.is_dir():
        raise AssetMissingError(f"image folder {path} does not exist: pass --source folder:PATH")
    split_dir = path / ("train" if train else "test")
    root = split_dir if split_dir.is_dir() and (path / "test").is_dir() else path
    try:
        ds = torchvision.datasets.ImageFolder(str(root), loader=open_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise AssetMissingError(f"image folder {root}: {e}") from None
    ds.data = None
    ds.coarse_targets, ds.coarse_classes, ds.fine_to_coarse = None, None, None
    if root == path:  # no explicit split: take every 5th image of each class for test
        targets = np.asarray(ds.targets)
        rng = np.random.default_rng(seed)
        test = np.zeros(len(targets), dtype=bool)
        for c in np.unique(targets):
            idx = rng.permutation(np.flatnonzero(targets == c))
            test[idx[: max(1, round(len(idx) * test_fraction))]] = True
        _take(ds, np.flatnonzero(test if not train else ~test))
    return ds


def build_source(cfg, train: bool, download: bool = True):
    """The dataset named by ``cfg.source`` for one split, subset to ``cfg.train_size/test_size``.

    Items are (PIL image, label) until a transform is set. Every source has ``classes``,
    ``targets``, ``coarse_classes``/``coarse_targets``/``fine_to_coarse`` (None for folders) and ``data``
    (uint8 [N, H, W, 3] for fixed-size sources, None for folders).
    """
    size = cfg.train_size if train else cfg.test_size
    if cfg.source == "cifar100":
        ds = cifar100(Path(cfg.data_root) / "cifar100", train=train, download=download)
    elif cfg.source == "synthetic":
        per_class = -(-size // 100) if size else (500 if train else 100)
        ds = SyntheticCIFAR(train=train, n_per_class=per_class, seed=cfg.seed)
        ds.fine_to_coarse = list(FINE_TO_COARSE)
    elif cfg.source.startswith("folder:"):
        ds = image_folder(cfg.source.split(":", 1)[1], train=train, seed=cfg.seed)
    else:
        raise ConfigError(f"unknown source {cfg.source!r}; choose one of {', '.join(SOURCES)}")
    if size is not None and size < len(ds):
        _take(ds, balanced_indices(ds.targets, size, seed=cfg.seed))
    ds.source_name = cfg.source
    ds.split = "train" if train else "test"
    return ds


def build_datasets(cfg, download: bool = True):
    """(train, test) sources with the tutorial's transforms: flip for train, none for test."""
    train_ds = build_source(cfg, train=True, download=download)
    test_ds = build_source(cfg, train=False, download=download)
    train_ds.transform = train_transform(cfg.image_size)
    test_ds.transform = eval_transform(cfg.image_size)
    return train_ds, test_ds


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


# Truncated files must fail loudly rather than load as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False
