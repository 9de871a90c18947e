"""The fast path: batched preprocessing on the device, frozen-feature extraction, the on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_save, backbone_fingerprint
from .data import IMAGENET_MEAN, IMAGENET_STD, open_image
from .errors import CifarTLError

# 2: preprocess became bit-exact with PIL's resize and centre-crops non-square images.
CACHE_FORMAT = 2
VIEWS_TRAIN = ("original", "flipped")
VIEWS_TEST = ("original",)
# Features are cached in float32, never float16: a random backbone's features differ across
# images only in the sixth significant digit (the smoke profile), which float16 (3 digits) erases.


# --------------------------------------------------------------------------- images
class FolderImages:
    """A folder source's images, decoded lazily: ``images[i:j]`` is uint8 [j-i, 3, S, S].

    Each slice is decoded, resized (shorter side) and centre-cropped with PIL, as the tutorial's
    transform does. Only one slice is ever in memory: 50,000 photos at 300 px would be 13.5 GB.
    """

    def __init__(self, samples, image_size: int):
        self.paths = [str(p) for p, _ in samples]
        self.image_size = image_size
        self.shape = (len(self.paths), 3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> torch.Tensor:
        from torchvision.transforms import CenterCrop, PILToTensor, Resize

        paths = self.paths[index]
        resize, crop, to_tensor = Resize(self.image_size), CenterCrop(self.image_size), PILToTensor()
        out = torch.empty(len(paths), *self.shape[1:], dtype=torch.uint8)
        for i, path in enumerate(paths):
            out[i] = to_tensor(crop(resize(open_image(path))))
        return out

    def fingerprint(self) -> bytes:
        """What identifies the images without decoding them: each file's path, size and mtime."""
        stats = [(p, st.st_size, st.st_mtime_ns) for p in self.paths for st in [os.stat(p)]]
        return json.dumps(stats).encode()


def images_uint8(ds, image_size: int) -> torch.Tensor | FolderImages:
    """A source's images as uint8 [N, 3, H, W], sliceable in batches, without per-image Python.

    Fixed-size sources (CIFAR-100, synthetic) expose ``data`` [N, H, W, 3], used as one tensor
    (32 px: 50,000 images are 150 MB). Folders give a lazy ``FolderImages``.
    """
    if getattr(ds, "data", None) is not None:
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return FolderImages(ds.samples, image_size)


# --------------------------------------------------------------------------- preprocessing
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


@lru_cache(maxsize=8)
def _mean_std_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std [1,3,1,1] on the device, made once: a host-to-device copy per batch
    would make the CPU wait for the GPU every batch."""
    with torch.inference_mode(False):
        return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def channels_last_pays(device: torch.device) -> bool:
    """channels_last for the backbone: on CUDA (tensor cores) and on the CPU, where oneDNN ran
    efficientnet_v2_s 10-25% faster with it at 64 and 112 px (benchmarks/README.md). Not on MPS."""
    return torch.device(device).type in ("cuda", "cpu")


def preprocess(x: torch.Tensor, image_size: int, channels_last: bool | None = None) -> torch.Tensor:
    """uint8 [B,3,h,w] on any device -> normalised float32 [B,3,S,S] on the same device.

    Equals the tutorial's ``Resize(S)``, ``CenterCrop(S)``, ``ToTensor()``, ``Normalize(...)`` per
    PIL image: the pixels bit for bit (``resize_crop``), the normalisation in the same float
    operations. ``channels_last`` defaults to what pays on the device.
    """
    x = resize_crop(x, image_size).to(torch.float32).div_(255)
    mean, std = _mean_std_on(x.device)
    x = x.sub_(mean).div_(std)
    if channels_last is None:
        channels_last = channels_last_pays(x.device)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# --------------------------------------------------------------------------- extraction
def default_extract_batch(device: torch.device, image_size: int) -> int:
    """Images per batch (the backbone sees twice as many with both views): large on a GPU. On
    the 2-core CPU (benchmarks/README.md), efficientnet_v2_s ran fastest with forward batches
    of 64 at 64 px and 32 at 112 px, slower above (caches overflow): 2048 / image_size images."""
    if torch.device(device).type == "cuda":
        return int(max(32, min(1024, 512 * (224 / image_size) ** 2)))
    return int(max(8, min(64, 2048 // image_size)))


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 autocast on CUDA where supported (else fp16); None (fp32) elsewhere."""
    if not amp or torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN picks the fastest convolution algorithm for each (fixed) batch shape; restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def extract(
    backbone: torch.nn.Module,
    images: torch.Tensor | FolderImages,
    image_size: int,
    device: torch.device,
    views: tuple[str, ...] = VIEWS_TRAIN,
    batch_size: int | None = None,
    amp: bool = True,
    progress: bool = True,
    desc: str = "extract",
) -> torch.Tensor:
    """Pooled features of every image, for each view: float32 [N, len(views), D] on the CPU.

    The backbone runs in eval mode, under inference_mode, in large batches holding all views of
    each image, channels_last and autocast on CUDA. Only one batch is ever resized: never the
    whole dataset (54 GB at 300 px in float32). On CUDA, a uint8 dataset up to 1 GB (CIFAR's 50,000
    images are 150 MB) is copied to the GPU once, and the features stay there until the end.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    cl = channels_last_pays(device)
    # Outside inference_mode: parameters converted in it would become inference tensors.
    backbone = backbone.to(device).eval()
    if cl:
        backbone = backbone.to(memory_format=torch.channels_last)
    bs = batch_size or default_extract_batch(device, image_size)
    dtype = amp_dtype(device, amp)
    n = len(images)
    if cuda and isinstance(images, torch.Tensor) and images.nbytes <= 2**30:
        images = images.to(device)
    out = torch.empty(n, len(views), backbone.num_features, device=device if cuda else "cpu")
    with torch.inference_mode(), _cudnn_benchmark(cuda):
        for i in tqdm(range(0, n, bs), desc=desc, disable=not progress, leave=False, file=sys.stdout):
            chunk = images[i : i + bs]
            if chunk.device != device:
                chunk = (chunk.pin_memory() if cuda else chunk).to(device, non_blocking=True)
            x = preprocess(chunk, image_size, channels_last=cl)
            x = torch.cat([x.flip(-1) if v == "flipped" else x for v in views])
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                f = backbone(x)
            out[i : i + len(chunk)] = f.float().view(len(views), len(chunk), -1).transpose(0, 1)
    return out.cpu()


# --------------------------------------------------------------------------- cache
def cache_key(images: torch.Tensor | FolderImages, targets, backbone: str, weights, image_size: int,
              views: tuple[str, ...], precision: str, weights_digest: str | None = None) -> str:
    """A hash of everything the features depend on: the image bytes themselves (a folder's
    files by path, size and modification time), targets, backbone, weights, size, views, precision.

    ``weights_digest`` (``checkpoint.backbone_fingerprint``, a hash of the backbone's tensors) is
    what names the weights for sure: two random backbones are both ``weights=None``.
    """
    h = hashlib.sha256()
    if isinstance(images, FolderImages):
        h.update(images.fingerprint())
    else:
        h.update(images.contiguous().numpy().data)
    h.update(np.asarray(targets, dtype=np.int64).tobytes())
    desc = dict(format=CACHE_FORMAT, n=len(targets), shape=list(images.shape), backbone=backbone,
                weights=str(weights), weights_digest=weights_digest, image_size=image_size,
                views=list(views), precision=precision)
    h.update(json.dumps(desc, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _read_cache(path: Path, key: str, targets: torch.Tensor, n_views: int) -> torch.Tensor | None:
    """The cached features if the file is whole and is the one asked for; else None with a notice."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats = blob["features"]
        ok = (blob.get("key") == key and feats.dtype == torch.float32 and feats.dim() == 3
              and tuple(feats.shape[:2]) == (len(targets), n_views)
              and torch.equal(blob["targets"], targets))
        reason = "its key, shape or targets do not match"
    except Exception as e:  # truncated, not a torch file, a pickle, missing fields
        ok, reason = False, f"unreadable ({e.__class__.__name__})"
    if not ok:
        print(f"feature cache {path} is stale or damaged ({reason}); rebuilding it")
        return None
    return feats


def cached_features(cfg, ds, backbone, device, views: tuple[str, ...], cache_dir=None,
                    use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Features [N, V, D] and targets [N] of a source, from the cache when it holds them.

    Returns (features, targets, info) where info says whether the cache was hit and where it is.
    The key includes a hash of the backbone's weights (50 ms for efficientnet_v2_s on a CPU), so
    features of one random backbone are never served for another.
    """

    device = torch.device(device)
    images = images_uint8(ds, cfg.image_size)
    targets = torch.as_tensor(ds.targets, dtype=torch.long)
    dtype = amp_dtype(device, cfg.amp)
    precision = str(dtype).replace("torch.", "") if dtype else "float32"
    key = cache_key(images, ds.targets, cfg.backbone, cfg.weights, cfg.image_size, views, precision,
                    weights_digest=backbone_fingerprint(backbone))
    path = Path(cache_dir or Path(cfg.data_root) / "features") / f"{cfg.backbone}-{cfg.image_size}px-{key}.pt"
    info = {"path": str(path), "hit": False}
    if use_cache:
        feats = _read_cache(path, key, targets, len(views))
        if feats is not None:
            info["hit"] = True
            return feats, targets, info
    feats = extract(backbone, images, cfg.image_size, device, views, cfg.extract_batch_size,
                    cfg.amp, cfg.progress, desc=f"extract {getattr(ds, 'split', '')}".strip())
    if use_cache:
        try:
            atomic_save({"key": key, "format": CACHE_FORMAT, "views": list(views),
                         "features": feats, "targets": targets}, path)
        except CifarTLError as e:  # a cache that cannot be written only costs time
            print(f"feature cache not saved: {e}; continuing without it (set CIFAR_TL_DATA to a "
                  "writable folder)")
    return feats, targets, info


@contextmanager
def head_threads(device, threads: int = 1):
    """Run the head's training on cached features with ``threads`` CPU threads (restored after).

    The head's matrices are tiny (batch 8 x 1280 x 256): on a CPU, splitting each across two
    threads costs more in synchronisation than it saves, and when anything else runs on the
    machine the threads wait for each other's time slices. Measured on the 2-core CPU
    (benchmarks/README.md), steps/s at batch 8: alone, 1 thread 1025 and 2 threads 1248; with
    other jobs running, 1 thread 594-1070 and 2 threads 24-95. No effect on GPUs.
    """
    before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(min(threads, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FeatureLoader:
    """Batches of (features, labels) from cached features, kept on the device.

    Training: each epoch a fresh permutation, and for every sample one of its views at random,
    which is exactly what ``RandomHorizontalFlip(p=0.5)`` gives the tutorial's head. Call
    ``set_epoch`` so that an epoch's order depends only on (seed, epoch): a resumed run sees the
    same batches as an uninterrupted one. Evaluation: in order, first view, nothing dropped.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 train: bool, seed: int = 0, device="cpu"):
        self.features = features.to(device)
        self.targets = targets.to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.epoch = 0
        self.dataset = self.targets  # len(loader.dataset) works as for a DataLoader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.targets)
        if self.train and n >= self.batch_size:
            return n // self.batch_size  # drop_last, as the tutorial's loader
        return -(-n // self.batch_size)

    def __iter__(self):
        n, dev = len(self.targets), self.targets.device
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g).to(dev)
            views = torch.randint(self.features.shape[1], (n,), generator=g).to(dev)
        else:
            order = torch.arange(n, device=dev)
            views = torch.zeros(n, dtype=torch.long, device=dev)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.features[idx, views[idx]], self.targets[idx]
