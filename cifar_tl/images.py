"""Image files: the supported formats, decoding any of them as upright 8-bit RGB, bounded resizing,
and a source's images as uint8 tensors (whole for fixed-size sources, decoded lazily for folders)."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torchvision import transforms as T

from .errors import ImageError, one_line

# The one list of formats: folder sources train on exactly the files that predict accepts.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                                   ".ppm", ".pgm", ".pbm", ".pnm")
# A resized image must fit in memory before the centre crop: Resize(S) sets the *shorter* side,
# so a 1 x 1,000,000 px strip (a few KB as PNG) would become S x S*1,000,000 pixels.
MAX_RESIZED_PIXELS = 64_000_000


# --------------------------------------------------------------------------- decoding
def open_image(path: str | Path, resize_to: int | None = None) -> Image.Image:
    """Open any supported image file as an upright 8-bit RGB PIL image, or raise ImageError naming the file.

    Handles grayscale, 16-bit, palette, CMYK, alpha (composited on white), EXIF rotation and
    animated files (first frame). Images above PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, 89 megapixels by default) are refused, not decoded.

    Args:
        path: an image file with one of ``IMAGE_SUFFIXES``.
        resize_to: the size the image will be resized to (shorter side); an image too elongated
            to resize in memory is refused (``check_resized_size``).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: not a supported image type ({path.suffix or 'no extension'}); "
                         f"supported: {', '.join(IMAGE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on odd EXIF or metadata: the pixels are fine
            # PIL only warns between 1x and 2x its pixel limit: refuse there too, in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)  # animated GIF, WebP or PNG: the first frame
                if resize_to is not None:  # from the header, before decoding (a rotation keeps the area)
                    check_resized_size(*im.size, resize_to, name=str(path))
                rgb = to_rgb(_upright(im))
    except ImageError:
        raise
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
    rgb.info["path"] = str(path)  # so that a later refusal (BoundedResize) can name the file
    return rgb


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


# --------------------------------------------------------------------------- resizing
def _resized(w: int, h: int, image_size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(image_size)``: the shorter side becomes image_size."""
    if w <= h:
        return image_size, int(image_size * h / w)
    return int(image_size * w / h), image_size


def check_resized_size(w: int, h: int, image_size: int, limit_pixels: int = MAX_RESIZED_PIXELS,
                       name: str | None = None) -> None:
    """Raise ImageError (one line) when resizing a w x h image to ``image_size`` px on its
    shorter side would make more than ``limit_pixels`` pixels, before any memory is spent."""
    rw, rh = _resized(w, h, image_size)
    if rw * rh > limit_pixels:
        raise ImageError(
            f"{name or 'an image'}: {w}x{h} px would be {rw}x{rh} px ({rw * rh / 1e6:,.0f} megapixels) once "
            f"resized to {image_size} px on its shorter side, more than the {limit_pixels / 1e6:.0f} "
            "megapixels allowed: crop it to a less elongated shape first")


class BoundedResize(T.Resize):
    """torchvision's ``Resize(size)`` that first refuses, in one line, an image whose resized
    size would not fit in memory (``check_resized_size``). Same pixels otherwise."""

    def forward(self, img):
        if isinstance(img, Image.Image):
            w, h = img.size
            name = img.info.get("path")
        else:  # a tensor [..., H, W]
            h, w = img.shape[-2:]
            name = None
        if isinstance(self.size, int) or len(self.size) == 1:
            size = self.size if isinstance(self.size, int) else self.size[0]
            check_resized_size(w, h, size, name=name)
        return super().forward(img)


# --------------------------------------------------------------------------- uint8 tensors
class FolderImages:
    """A folder source's images, decoded lazily: ``images[i:j]`` is uint8 [j-i, 3, S, S].

    Each slice is decoded, resized (shorter side) and centre-cropped with PIL, as the tutorial's
    transform does. Only one slice is ever in memory: 50,000 photos at 300 px would be 13.5 GB.
    An image too elongated to resize in memory is refused (ImageError naming it).
    """

    def __init__(self, paths, image_size: int):
        # (path, label) pairs, as torchvision's ImageFolder.samples, are accepted too.
        self.paths = [str(p[0] if isinstance(p, tuple) else p) for p in paths]
        self.image_size = image_size
        self.shape = (len(self.paths), 3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> torch.Tensor:
        paths = self.paths[index]
        resize, crop, to_tensor = T.Resize(self.image_size), T.CenterCrop(self.image_size), T.PILToTensor()
        out = torch.empty(len(paths), *self.shape[1:], dtype=torch.uint8)
        for i, path in enumerate(paths):
            out[i] = to_tensor(crop(resize(open_image(path, resize_to=self.image_size))))
        return out

    def fingerprint(self) -> bytes:
        """What identifies the images without decoding them: each file's path, size and mtime."""
        stats = [(p, st.st_size, st.st_mtime_ns) for p in self.paths for st in [os.stat(p)]]
        return json.dumps(stats).encode()


def images_uint8(ds, image_size: int) -> torch.Tensor | FolderImages:
    """A source's images as uint8 [N, 3, H, W], sliceable in batches, without per-image Python.

    Fixed-size sources (CIFAR-100, synthetic) expose ``data`` [N, H, W, 3], used as one tensor
    (32 px: 50,000 images are 150 MB). Folders (``paths``) give a lazy ``FolderImages``.
    """
    if getattr(ds, "data", None) is not None:
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    paths = getattr(ds, "paths", None)
    return FolderImages(paths if paths is not None else ds.samples, image_size)


# Truncated files must fail loudly rather than load as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False
