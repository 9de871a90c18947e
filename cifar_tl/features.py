"""The fast path: batched preprocessing on the device, frozen-feature extraction, the on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import IMAGENET_MEAN, IMAGENET_STD, open_image

CACHE_FORMAT = 1
VIEWS_TRAIN = ("original", "flipped")
VIEWS_TEST = ("original",)


def images_uint8(ds, image_size: int) -> torch.Tensor:
    """A source's images as one uint8 tensor [N, 3, H, W], without per-image Python where possible.

    Fixed-size sources (CIFAR-100, synthetic) expose ``data`` [N, H, W, 3] and are used as is
    (32 px: 50,000 images are 150 MB). Folders are decoded once and resized (shorter side) and
    centre-cropped to ``image_size`` with PIL, as the tutorial's transform would.
    """
    if getattr(ds, "data", None) is not None:
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    from torchvision.transforms import CenterCrop, PILToTensor, Resize

    resize, crop, to_tensor = Resize(image_size), CenterCrop(image_size), PILToTensor()
    out = torch.empty(len(ds.samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(ds.samples):
        out[i] = to_tensor(crop(resize(open_image(path))))
    return out


def preprocess(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [B,3,h,w] on any device -> normalised float [B,3,S,S], channels_last.

    The same geometry as torchvision's ``Resize`` on a PIL image (bilinear, half-pixel centres,
    antialiased when shrinking), and rounded back to 8-bit levels as PIL does, so the result
    matches the tutorial's per-image transform to within float rounding.
    """
    x = x.float()
    if x.shape[-2:] != (image_size, image_size):
        shrink = x.shape[-1] > image_size or x.shape[-2] > image_size
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=shrink)
        x = x.round_().clamp_(0, 255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def default_extract_batch(device: torch.device, image_size: int) -> int:
    """Large batches on a GPU, small ones on a CPU (where they buy little and cost memory)."""
    scale = (224 / image_size) ** 2
    if device.type == "cuda":
        return int(max(32, min(1024, 512 * scale)))
    return int(max(8, min(128, 32 * scale)))


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.inference_mode()
def extract(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    image_size: int,
    device: torch.device,
    views: tuple[str, ...] = VIEWS_TRAIN,
    batch_size: int | None = None,
    amp: bool = True,
    progress: bool = True,
    desc: str = "extract",
) -> torch.Tensor:
    """Pooled features of every image, for each view: float32 [N, len(views), D] on the CPU.

    The backbone runs in eval mode, under inference_mode, channels_last, in large batches, with
    autocast on CUDA. Only one batch is ever resized: never the whole dataset (54 GB at 300 px).
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    bs = batch_size or default_extract_batch(device, image_size)
    dtype = amp_dtype(device, amp)
    out = torch.empty(len(images), len(views), backbone.num_features)
    pin = device.type == "cuda"
    for i in tqdm(range(0, len(images), bs), desc=desc, disable=not progress, leave=False,
                  file=sys.stdout):
        chunk = images[i : i + bs]
        chunk = (chunk.pin_memory() if pin else chunk).to(device, non_blocking=True)
        x = preprocess(chunk, image_size)
        x = torch.cat([x.flip(-1) if v == "flipped" else x for v in views])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f = backbone(x).float()
        out[i : i + len(chunk)] = f.view(len(views), len(chunk), -1).transpose(0, 1).cpu()
    return out


# --------------------------------------------------------------------------- cache
def cache_key(images: torch.Tensor, targets, backbone: str, weights, image_size: int,
              views: tuple[str, ...], precision: str) -> str:
    """A hash of everything the features depend on, the image bytes themselves included."""
    h = hashlib.sha256()
    h.update(images.numpy().tobytes() if images.is_contiguous() else images.contiguous().numpy().tobytes())
    h.update(np.asarray(targets, dtype=np.int64).tobytes())
    if weights not in (None, "imagenet") and Path(str(weights)).is_file():
        st = Path(weights).stat()
        weights = f"{Path(weights).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    desc = dict(format=CACHE_FORMAT, n=len(targets), shape=list(images.shape), backbone=backbone,
                weights=weights, image_size=image_size, views=list(views), precision=precision)
    h.update(json.dumps(desc, sort_keys=True).encode())
    return h.hexdigest()[:24]


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a unique temp file in the same folder, then rename: readers never see half a file,
    two writers never mix their bytes, and a crash leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, key: str, n: int, n_views: int) -> torch.Tensor | None:
    """The cached features if the file is whole and is the one asked for; else None with a notice."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats = blob["features"]
        ok = blob.get("key") == key and tuple(feats.shape[:2]) == (n, n_views)
        reason = "its key or shape does not match"
    except Exception as e:
        ok, reason = False, f"unreadable ({e.__class__.__name__})"
    if not ok:
        print(f"feature cache {path} is stale or damaged ({reason}); rebuilding it")
        return None
    return feats


def cached_features(cfg, ds, backbone, device, views: tuple[str, ...], cache_dir=None,
                    use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Features [N, V, D] and targets [N] of a source, from the cache when it holds them.

    Returns (features, targets, info) where info says whether the cache was hit and where it is.
    """
    device = torch.device(device)
    images = images_uint8(ds, cfg.image_size)
    targets = torch.as_tensor(ds.targets, dtype=torch.long)
    dtype = amp_dtype(device, cfg.amp)
    precision = str(dtype).replace("torch.", "") if dtype else "float32"
    key = cache_key(images, ds.targets, cfg.backbone, cfg.weights, cfg.image_size, views, precision)
    path = Path(cache_dir or Path(cfg.data_root) / "features") / f"{cfg.backbone}-{cfg.image_size}px-{key}.pt"
    info = {"path": str(path), "hit": False}
    if use_cache:
        feats = _read_cache(path, key, len(targets), len(views))
        if feats is not None:
            info["hit"] = True
            return feats, targets, info
    feats = extract(backbone, images, cfg.image_size, device, views, cfg.extract_batch_size,
                    cfg.amp, cfg.progress, desc=f"extract {getattr(ds, 'split', '')}".strip())
    if use_cache:
        try:
            atomic_torch_save({"key": key, "format": CACHE_FORMAT, "views": list(views),
                               "features": feats, "targets": targets}, path)
        except OSError as e:
            print(f"could not write the feature cache to {path.parent} ({e.strerror}); "
                  "continuing without it (set CIFAR_TL_DATA to a writable folder)")
    return feats, targets, info


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
