"""The pretraining source task: a generated "ImageNet" of hue x pattern classes, none of them a smoke class.

The smoke target (``synthetic.py``) is 10 hues x 10 textures (horizontal, vertical and diagonal
stripes, checker, dots, disc, ring, cross, gradient, grid). This source uses the same primitives
(colour, texture, shape, scale, position, orientation, clutter, backgrounds) but other patterns:
six shapes (a triangle, a square, a star, a crescent, an ellipse, a frame) at a random place and
size, and ten textures the target does not have (stripes at 22 and at 67 degrees, zigzag, waves,
concentric rings, a sunburst, bricks, a plaid at 30 degrees, hexagonal dots, marble), in twelve
hues around the wheel: 192 classes. What a backbone learns to tell them apart (hue, edges,
orientation, periodic patterns, shapes) is what the target needs, but no source class is a target
class.

Each class has one orientation (up to a small jitter and its mirror image), as ImageNet's classes
are mostly seen upright. Version 2 drew every pattern at a random angle: the backbone learnt to
ignore orientation, and with it the difference between the target's horizontal, vertical and
diagonal stripes (texture accuracy 39% against 52% now; benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np

from .synthetic import _hsv_to_rgb

SHAPES = ("triangle", "square", "star", "crescent", "ellipse", "frame")
PATTERNS = SHAPES + ("stripes22", "stripes67", "zigzag", "waves", "rings", "sunburst", "bricks", "plaid",
                     "hexdots", "marble")
# Each pattern's orientation (radians): a class has one, up to a small jitter and a mirror image
# (horizontal flips map an angle a to -a), as most ImageNet classes are seen upright.
_ANGLE = {"stripes22": np.pi / 8, "stripes67": 3 * np.pi / 8, "plaid": np.pi / 6}
N_HUES = 12  # every 30 degrees
CLASSES: list[str] = [f"hue{h * 30:03d} {p}" for h in range(N_HUES) for p in PATTERNS]


def _polygon(r, phi, n):
    """Inside a regular n-gon of circumradius 1 (polar coordinates in its own frame)."""
    sector = 2 * np.pi / n
    return r * np.cos((phi % sector) - sector / 2) < np.cos(np.pi / n)


def _mask(pattern: int, q: dict, u, v) -> np.ndarray:
    """Foreground coverage (0/1) for images sharing one pattern; ``u, v`` are pixel coordinates
    rotated into each image's frame and divided by its scale."""
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u) % (2 * np.pi)
    k, ph = q["freq"], q["phase"]
    name = PATTERNS[pattern]
    if name in ("triangle", "square"):
        m = _polygon(r, phi, {"triangle": 3, "square": 4}[name])
    elif name == "star":
        m = r < 0.5 + 0.45 * np.cos(5 * phi)
    elif name == "crescent":
        m = (r < 1) & ((u - 0.45) ** 2 + v * v > 0.75)
    elif name == "ellipse":
        m = u * u + (v / 0.45) ** 2 < 1
    elif name == "frame":
        m = (np.maximum(np.abs(u), np.abs(v)) < 0.95) & (np.maximum(np.abs(u), np.abs(v)) > 0.62)
    elif name == "zigzag":
        tri = np.abs(((u * k / 2 + ph) % 1.0) - 0.5)
        m = ((v * k + tri * 1.6 + ph) % 1.0) < 0.5
    elif name == "waves":
        m = ((v * k + 0.35 * np.sin(u * k * 3.0) + ph) % 1.0) < 0.5
    elif name in ("stripes22", "stripes67"):
        m = ((v * k + ph) % 1.0) < 0.5
    elif name == "rings":
        m = ((r * k + ph) % 1.0) < 0.5
    elif name == "plaid":
        m = (((u * k + ph) % 1.0) < 0.22) | (((v * k + ph) % 1.0) < 0.22)
    elif name == "hexdots":
        a, b = u * k, (v * k) / 0.866
        row = np.floor(b + ph)
        du = ((a + 0.5 * (row % 2) + ph) % 1.0) - 0.5
        dv = (((b + ph) % 1.0) - 0.5) * 0.866
        m = du * du + dv * dv < 0.09
    elif name == "sunburst":
        m = ((phi * 8 / (2 * np.pi) + ph) % 1.0) < 0.5
    elif name == "bricks":
        row = np.floor(v * k + ph)
        m = (((v * k + ph) % 1.0) > 0.18) & (((u * k * 0.5 + 0.5 * (row % 2)) % 1.0) > 0.1)
    else:  # marble: a threshold of two random waves at other angles
        m = np.sin(u * k * 2.1 + ph * 6.3) + np.sin((u * 0.6 + v * 0.8) * k * 3.3) > 0.3
    return m.astype(np.float32)


def make_source(n_per_class: int, seed, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced set of the source task's images: uint8 (N, size, size, 3) and int64 labels.

    Deterministic in ``seed`` (an int or a sequence of ints, for numpy's ``default_rng``).
    Each image: a background (a dull colour of any hue, dark or light, with a second-colour
    gradient), up to three clutter blobs of any colour, the class's pattern in the class's hue (random
    saturation and brightness), at a random place, size and angle, and pixel noise.
    """
    rng = np.random.default_rng(seed)
    n_classes = len(CLASSES)
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class))
    n = labels.size
    hue_idx, pat_idx = labels // len(PATTERNS), labels % len(PATTERNS)

    def u_(lo, hi):
        return rng.uniform(lo, hi, n).astype(np.float32)

    fg = _hsv_to_rgb(hue_idx * 30.0 + u_(-6, 6), u_(0.6, 1.0), u_(0.6, 1.0))
    light = rng.random(n) < 0.3
    bg_v = np.where(light, u_(0.7, 0.95), u_(0.05, 0.4)).astype(np.float32)
    bg = _hsv_to_rgb(u_(0, 360), u_(0.0, 0.3), bg_v)
    bg2 = _hsv_to_rgb(u_(0, 360), u_(0.0, 0.3), np.clip(bg_v + u_(-0.15, 0.15), 0, 1))
    shape = {"cx": size * u_(0.25, 0.75), "cy": size * u_(0.25, 0.75), "scale": size * u_(0.18, 0.42),
             "angle": u_(-0.2, 0.2), "freq": u_(2.5, 5.0), "phase": u_(0, 1)}
    base = np.array([_ANGLE.get(p, 0.0) for p in PATTERNS], dtype=np.float32)[pat_idx]
    shape["angle"] = (shape["angle"] + base * np.where(rng.random(n) < 0.5, -1.0, 1.0)).astype(np.float32)
    textured = np.isin(pat_idx, [PATTERNS.index(p) for p in PATTERNS if p not in SHAPES])
    shape["scale"] = np.where(textured, size * u_(0.9, 1.3), shape["scale"]).astype(np.float32)
    clutter = [(size * u_(0, 1), size * u_(0, 1), size * u_(0.04, 0.1), _hsv_to_rgb(u_(0, 360), u_(0, 1), u_(0.1, 0.9)),
                rng.random(n) < 0.6) for _ in range(3)]
    grad_angle = u_(0, 2 * np.pi)
    noise = rng.standard_normal((n, size, size, 3), dtype=np.float32)

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    t = ((x - size / 2) * np.cos(grad_angle)[:, None, None] + (y - size / 2) * np.sin(grad_angle)[:, None, None])
    t = np.clip(0.5 + t / size, 0, 1)[..., None]
    img = 255.0 * (bg[:, None, None, :] * (1 - t) + bg2[:, None, None, :] * t)
    for cx, cy, rad, grey, on in clutter:
        d2 = (x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2
        m = ((d2 < rad[:, None, None] ** 2) & on[:, None, None]).astype(np.float32)[..., None]
        img += (255.0 * grey[:, None, None, :] - img) * m
    alpha = np.empty((n, size, size), dtype=np.float32)
    for p in range(len(PATTERNS)):
        idx = np.flatnonzero(pat_idx == p)
        q = {k: v[idx, None, None] for k, v in shape.items()}
        dx, dy = x - q["cx"], y - q["cy"]
        c, s = np.cos(q["angle"]), np.sin(q["angle"])
        alpha[idx] = _mask(p, q, (dx * c + dy * s) / q["scale"], (-dx * s + dy * c) / q["scale"])
    img += (255.0 * fg[:, None, None, :] - img) * alpha[..., None]
    img += 6.0 * noise
    np.clip(img, 0.0, 255.0, out=img)
    return np.rint(img).astype(np.uint8), labels
