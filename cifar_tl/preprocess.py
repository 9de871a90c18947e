"""The tutorial's eval transform on a whole uint8 batch, on the device: PIL-exact resize, crop,
normalise; and ``ImageBatches``, the seed's flips and shuffle on such batches for fine-tuning."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .config import epoch_seed
from .data import IMAGENET_MEAN, IMAGENET_STD
from .images import images_uint8

__all__ = ["ImageBatches", "channels_last_pays", "preprocess", "resize_crop", "resized_size"]

# PIL resizes 8-bit images in fixed point: weights scaled by 2**22 and rounded to integers, a
# horizontal pass rounded to 8 bits, then a vertical pass. Doing the same arithmetic (in float64,
# where these integer sums are exact) gives PIL's pixels bit for bit. Plain bilinear
# interpolation in float differs from PIL by one 8-bit level in about 20% of the pixels.
_PIL_BITS = 22


@lru_cache(maxsize=64)
def _pil_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """PIL's integer weights [n_out, n_in] for resizing one axis (Pillow's precompute_coeffs).

    A triangle filter on half-pixel centres, widened by the scale when shrinking (antialias).
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1 input pixel, times the scale
    kk = np.zeros((n_out, n_in), dtype=np.float64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        x = np.arange(xmax - xmin, dtype=np.float64)
        w = np.clip(1.0 - np.abs((x + xmin - center + 0.5) / filterscale), 0.0, None)
        if w.sum() != 0:
            w = w / w.sum()
        kk[xx, xmin:xmax] = np.trunc(0.5 + w * (1 << _PIL_BITS))  # weights are >= 0
    return kk


@lru_cache(maxsize=64)
def _weights_on(n_in: int, n_out: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows start:stop of the weights, as float64 on the device, made once (no copy per batch)."""
    with torch.inference_mode(False):  # a normal tensor, usable in and out of inference_mode
        return torch.from_numpy(_pil_bilinear_weights(n_in, n_out)[start:stop]).to(device)


def _pil_pass(weighted_sum: torch.Tensor) -> torch.Tensor:
    """PIL's rounding of one pass: (sum + 2**21) >> 22, clipped to 0..255."""
    return torch.floor((weighted_sum + (1 << (_PIL_BITS - 1))) / (1 << _PIL_BITS)).clamp_(0, 255)


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` with one number: the shorter side becomes ``size``."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize_crop(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [B,3,h,w] -> float32 [B,3,S,S] of 8-bit levels: ``Resize(S)`` + ``CenterCrop(S)`` on
    PIL images, bit for bit (bilinear, antialiased when shrinking, PIL's fixed-point rounding).

    Only the rows and columns the crop keeps are computed. float64: PIL's integer sums (up to
    2**30) are exact in it; MPS lacks it, so there the resize runs on the CPU.
    """
    h, w = x.shape[-2:]
    nh, nw = resized_size(h, w, image_size)
    top, left = int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))
    if (nh, nw) == (h, w):  # torchvision skips the resize then, and so do we
        return x[..., top : top + image_size, left : left + image_size].to(torch.float32)
    dev = x.device
    x = x.to("cpu" if dev.type == "mps" else dev, torch.float64)
    if nw != w:  # PIL resizes horizontally first, rounding to 8 bits in between
        x = _pil_pass(x @ _weights_on(w, nw, left, left + image_size, x.device).T)
    else:
        x = x[..., left : left + image_size]
    if nh != h:
        x = _pil_pass(_weights_on(h, nh, top, top + image_size, x.device) @ x)
    else:
        x = x[..., top : top + image_size, :]
    return x.to(dev, torch.float32)


@lru_cache(maxsize=16)
def _mean_std_on(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std [1,3,1,1] on the device, made once: a host-to-device copy per batch would
    make the CPU wait for the GPU every batch."""
    with torch.inference_mode(False):
        return (torch.tensor(mean, device=device).view(1, 3, 1, 1),
                torch.tensor(std, device=device).view(1, 3, 1, 1))


def channels_last_pays(device: torch.device) -> bool:
    """Whether the backbone should get channels_last input on this device: yes on CUDA (tensor
    cores) and on the CPU, where oneDNN runs convolutions faster in it (benchmarks/README.md,
    "CPU choices"); not on MPS."""
    return torch.device(device).type in ("cuda", "cpu")


def preprocess(x: torch.Tensor, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               channels_last: bool | None = None) -> torch.Tensor:
    """uint8 [B,3,h,w] on any device -> normalised float32 [B,3,S,S] on the same device.

    Equals the tutorial's ``Resize(S)``, ``CenterCrop(S)``, ``ToTensor()``, ``Normalize(mean, std)``
    per PIL image: the pixels bit for bit (``resize_crop``), the normalisation in the same float
    operations. ``mean`` and ``std`` default to ImageNet's (the tutorial's); pass the backbone's
    own (``models.normalization``) for weights trained with others. ``channels_last`` defaults to
    what pays on the device.
    """
    x = resize_crop(x, image_size).to(torch.float32).div_(255)
    m, s = _mean_std_on(x.device, tuple(float(v) for v in mean), tuple(float(v) for v in std))
    x = x.sub_(m).div_(s)
    if channels_last is None:
        channels_last = channels_last_pays(x.device)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ImageBatches:
    """(preprocessed images on the device, labels) from a source's uint8 images: no DataLoader,
    no per-image Python. Training: a permutation and random flips drawn from (seed, epoch) alone,
    the seed's only augmentation; evaluation: in order, no flips."""

    def __init__(self, ds, image_size: int, batch_size: int, device, train: bool, seed: int = 0,
                 mean=None, std=None):
        self.images = images_uint8(ds, image_size)
        self.targets = torch.as_tensor(ds.targets, dtype=torch.long)
        self.dataset = self.targets
        self.image_size, self.batch_size, self.train, self.seed = image_size, batch_size, train, seed
        self.device, self.epoch = torch.device(device), 0
        self.norm = {} if mean is None else {"mean": mean, "std": std}
        if self.device.type == "cuda" and isinstance(self.images, torch.Tensor) and self.images.nbytes <= 2**30:
            self.images = self.images.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.targets)
        return n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.targets)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        flips = torch.rand(n, generator=g) < 0.5 if self.train else torch.zeros(n, dtype=torch.bool)
        cl = channels_last_pays(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx.to(self.images.device)] if isinstance(self.images, torch.Tensor) \
                else torch.cat([self.images[int(i):int(i) + 1] for i in idx])
            x = preprocess(x.to(self.device), self.image_size, channels_last=cl, **self.norm)
            f = flips[idx].to(self.device)
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
            yield x, self.targets[idx].to(self.device)
