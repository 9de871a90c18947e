"""A deterministic, learnable, CIFAR-like synthetic dataset (hue x texture) for offline use, as photos or sketches."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Ten saturated foreground hues, in degrees on the HSV wheel. The first five are "warm", the
# last five "cool"; the superclasses below use that split.
HUES: tuple[str, ...] = (
    "magenta",
    "red",
    "orange",
    "yellow",
    "lime",
    "green",
    "teal",
    "cyan",
    "blue",
    "violet",
)
_HUE_DEGREES = np.array([320, 0, 30, 58, 90, 125, 160, 188, 225, 268], dtype=np.float32)

TEXTURES: tuple[str, ...] = (
    "hstripes",
    "vstripes",
    "diagonal",
    "checker",
    "dots",
    "disc",
    "ring",
    "cross",
    "gradient",
    "grid",
)

# Fine class index = hue_index * 10 + texture_index (hue-major), e.g. 13 = "red checker".
CLASSES: list[str] = [f"{h} {t}" for h in HUES for t in TEXTURES]

# Superclass = texture x warm/cool hue: coarse index = texture_index * 2 + (hue_index >= 5).
# Each superclass therefore holds the five fine classes that share a texture and a hue family.
COARSE_CLASSES: list[str] = [f"{w} {t}" for t in TEXTURES for w in ("warm", "cool")]
FINE_TO_COARSE: list[int] = [t * 2 + int(h >= 5) for h in range(10) for t in range(10)]


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; h in degrees, s and v in [0, 1]; returns (..., 3) float32."""
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32) + (h[..., None] % 360) / 60.0) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (v[..., None] * (1.0 - s[..., None] * ramp)).astype(np.float32)


def _masks(texture: int, p: dict[str, np.ndarray], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Foreground coverage in [0, 1], shape (n, S, S), for n images sharing one texture."""
    period, px, py = p["period"], p["phase_x"], p["phase_y"]
    half = period / 2
    dx, dy = x - p["cx"], y - p["cy"]
    dist = np.sqrt(dx * dx + dy * dy)
    name = TEXTURES[texture]
    if name == "hstripes":
        m = (y + py) % period < half
    elif name == "vstripes":
        m = (x + px) % period < half
    elif name == "diagonal":  # stripes at +-45 degrees, direction chosen per image
        m = (x + p["sign"] * y + px) % (period * 1.2) < half * 1.2
    elif name == "checker":
        m = ((x + px) % period < half) ^ ((y + py) % period < half)
    elif name == "dots":
        ddx = (x + px) % period - half
        ddy = (y + py) % period - half
        m = ddx * ddx + ddy * ddy < (0.32 * period) ** 2
    elif name == "disc":
        m = dist < p["radius"]
    elif name == "ring":
        m = np.abs(dist - p["radius"]) < p["width"]
    elif name == "cross":
        m = (np.abs(dx) < p["width"]) | (np.abs(dy) < p["width"])
    elif name == "gradient":  # linear ramp from background to hue along a random direction
        t = dx * np.cos(p["angle"]) + dy * np.sin(p["angle"])
        return np.clip(0.5 + t / (y.shape[-2] * 0.8), 0.0, 1.0)
    else:  # grid: thin lines every period pixels
        m = ((x + px) % period < p["width"] * 0.8) | ((y + py) % period < p["width"] * 0.8)
    return m.astype(np.float32)


STYLES = ("photo", "sketch")


def _generate(
    rng: np.random.Generator, n_per_class: int, size: int, style: str = "photo"
) -> tuple[np.ndarray, np.ndarray]:
    """``style``: "photo" (a hue's texture filled in over a dark background, with clutter) or
    "sketch" (the same classes as coloured outlines on a light background: a shifted domain)."""
    n_classes = len(CLASSES)
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class))
    n = labels.size
    hue_idx, tex_idx = labels // 10, labels % 10

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(np.float32)

    # All random draws happen here, in a fixed order, so results depend only on the seed.
    fg = _hsv_to_rgb(_HUE_DEGREES[hue_idx] + u(-4, 4), u(0.8, 1.0), u(0.85, 1.0))
    bg = _hsv_to_rgb(u(0, 360), u(0.0, 0.25), u(0.05, 0.35))  # dull, dark, any hue
    params = {
        "period": size * u(0.22, 0.42),
        "phase_x": u(0, size),
        "phase_y": u(0, size),
        "cx": size * u(0.28, 0.72),
        "cy": size * u(0.28, 0.72),
        "radius": size * u(0.2, 0.38),
        "width": size * u(0.08, 0.12),
        "angle": u(0, 2 * np.pi),
        "sign": np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32),
    }
    img = rng.standard_normal((n, size, size, 3), dtype=np.float32)
    # The texture covers a random window (55-100% of each side); clutter: up to two blobs of any
    # colour, a part of the scene that is not the class.
    win = [size * u(0.0, 0.45) for _ in range(2)]
    win = [*win, *(w + size * u(0.55, 1.0) for w in win)]
    clutter = [(size * u(0, 1), size * u(0, 1), size * u(0.06, 0.12), rng.random(n) < 0.6,
                _hsv_to_rgb(u(0, 360), u(0.0, 1.0), u(0.3, 1.0))) for _ in range(2)]
    if style == "sketch":
        fg = _hsv_to_rgb(_HUE_DEGREES[hue_idx] + u(-4, 4), u(0.85, 1.0), u(0.55, 0.85))
        bg = _hsv_to_rgb(u(0, 360), u(0.0, 0.12), u(0.8, 0.97))  # paper: light, nearly grey

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    alpha = np.empty((n, size, size), dtype=np.float32)
    for t in range(len(TEXTURES)):
        idx = np.flatnonzero(tex_idx == t)
        p = {k: v[idx, None, None] for k, v in params.items()}
        alpha[idx] = _masks(t, p, y, x)
    x0, y0, x1, y1 = (w[:, None, None] for w in win)
    alpha *= (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    if style == "sketch":  # outlines: where the (3-level) coverage changes from a neighbour
        q = np.rint(alpha * 3)
        alpha = np.zeros_like(alpha)
        alpha[:, :, 1:] += q[:, :, 1:] != q[:, :, :-1]
        alpha[:, 1:, :] += q[:, 1:, :] != q[:, :-1, :]
        np.clip(alpha, 0.0, 1.0, out=alpha)
    # In-place compositing, in 0..255 units: noise * 8 + bg, clutter, then (fg - bg) * alpha.
    img *= 8.0
    img += 255.0 * bg[:, None, None, :]
    for cx, cy, rad, on, colour in clutter:
        d2 = (x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2
        m = ((d2 < rad[:, None, None] ** 2) & on[:, None, None]).astype(np.float32)[..., None]
        img += (255.0 * colour[:, None, None, :] - img) * m
    img += (255.0 * fg[:, None, None, :] - img) * alpha[..., None]
    np.clip(img, 0.0, 255.0, out=img)
    return np.rint(img, out=img).astype(np.uint8), labels


def make_images(n_per_class: int, seed: int, size: int = 32, style: str = "photo") -> tuple[np.ndarray, np.ndarray]:
    """Generate a class-balanced set of hue x texture images.

    Args:
        n_per_class: images per class (100 classes).
        seed: the same seed gives bit-identical arrays; different seeds give different images.
        size: image side in pixels.
        style: "photo" (the smoke target) or "sketch" (the same classes as outlines on paper).

    Returns:
        uint8 images (N, size, size, 3), HWC like CIFAR's ``.data``, and int64 labels (N,),
        in an order shuffled deterministically by ``seed``.
    """
    return _generate(np.random.default_rng(seed), n_per_class, size, style)


class SyntheticCIFAR(torch.utils.data.Dataset):
    """Drop-in stand-in for ``torchvision.datasets.CIFAR100`` with coarse labels, made offline.

    Follows the dataset contract of ``cifar_tl.data``. The train and test splits of one ``seed``
    are different images: the generator is seeded with ``(seed, train)``. ``style="sketch"`` draws
    the same classes as coloured outlines on a light background (the ``synthetic-sketch`` source):
    a shifted domain, as X-rays or drawings are for ImageNet features.
    """

    def __init__(
        self,
        train: bool = True,
        n_per_class: int = 10,
        seed: int = 0,
        transform=None,
        target_transform=None,
        style: str = "photo",
    ):
        self.train = train
        self.split = "train" if train else "test"
        self.transform = transform
        self.target_transform = target_transform
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style = style
        rng = np.random.default_rng([seed, int(train)] + ([] if style == "photo" else [STYLES.index(style)]))
        self.data, labels = _generate(rng, n_per_class, 32, style)
        self.targets: list[int] = labels.tolist()
        self.classes: list[str] = list(CLASSES)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.coarse_classes: list[str] = list(COARSE_CLASSES)
        self.coarse_targets: list[int] = [FINE_TO_COARSE[t] for t in self.targets]
        self.fine_to_coarse: list[int] = list(FINE_TO_COARSE)
        self.paths = None  # fixed-size images live in ``data``

    def raw_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as stored: uint8 [32, 32, 3]."""
        return self.data[index]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
