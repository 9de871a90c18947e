"""Frozen features: extraction in large batches, the on-disk cache with a per-view record, FeatureLoader."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # text bars: a saved notebook shows "Error displaying widget" for tqdm.auto's

from .backbones import list_backbones, normalization
from .checkpoint import backbone_fingerprint
from .config import epoch_seed
from .data import IMAGENET_MEAN, IMAGENET_STD
from .engines import BackboneRunner, make_runner, resolve_engine, resolve_precision
from .errors import CifarTLError
from .images import FolderImages, images_uint8
from .memory import fit_batch
from .preprocess import preprocess
from .storage import atomic_save
from .threads import warn_if_late

log = logging.getLogger(__name__)

# 3: a per-view presence record (views are extracted as training needs them); engine in the key.
CACHE_FORMAT = 3
VIEWS_TRAIN = ("original", "flipped")
VIEWS_TEST = ("original",)
# From 3 epochs on a training image needs both views with probability 1 - 2**(1-E) >= 75%, and
# extracting them all (1.75 -> 2 views per image at E = 3) spares later runs any extraction.
ALL_VIEWS_FROM_EPOCHS = 3
# Features are cached in float32, never float16: a random backbone's features differ across
# images only in the sixth significant digit (the smoke profile), which float16 (3 digits) erases.
# Views not extracted yet hold NaN: a loader that read one would fail loudly, never train on it.


# --------------------------------------------------------------------------- extraction
def default_extract_batch(device: torch.device, image_size: int) -> int:
    """Images per batch (the backbone sees one batch per view): large on a GPU; on a CPU about
    2048 / image_size, where the caches stop holding a batch (benchmarks/README.md, "CPU choices")."""
    if torch.device(device).type == "cuda":
        return int(max(32, min(1024, 512 * (224 / image_size) ** 2)))
    return int(max(8, min(64, 2048 // image_size)))


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of ``extract(amp=...)`` without a runner: bf16 on CUDA where supported
    (else fp16), None (fp32) elsewhere. ``engines.resolve_precision`` is the full rule."""
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


def _rows(images, idx: torch.Tensor) -> torch.Tensor:
    """images[idx] for a tensor, a lazy folder (one decode per image either way) or a slice."""
    if isinstance(images, torch.Tensor):
        return images[idx.to(images.device)]
    if len(idx) and int(idx[-1]) - int(idx[0]) == len(idx) - 1:  # contiguous: one slice
        return images[int(idx[0]) : int(idx[-1]) + 1]
    return torch.cat([images[int(i) : int(i) + 1] for i in idx])


def extract(backbone: torch.nn.Module, images: torch.Tensor | FolderImages, image_size: int,
            device: torch.device, views: tuple[str, ...] = VIEWS_TRAIN, batch_size: int | None = None,
            amp: bool = True, progress: bool = True, desc: str = "extract", *,
            runner: BackboneRunner | None = None, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled features of the images (``indices`` of them, else all), for each view: float32
    [N, len(views), D] on the CPU.

    ``runner`` (``engines.make_runner``) says how the backbone runs; without one it runs on torch,
    in bf16/fp16 autocast on CUDA when ``amp``, fp32 elsewhere. Batches hold all views of their
    images. Only one batch is ever resized: never the whole dataset (54 GB at 300 px in float32);
    a batch that would not fit in half the free memory is made smaller (``memory.fit_batch``).
    On CUDA, a uint8 dataset up to 1 GB is copied to the GPU once.
    """
    device = torch.device(device)
    if runner is None:
        dtype = amp_dtype(device, amp)
        runner = BackboneRunner(backbone, device, {None: "fp32", torch.bfloat16: "bf16"}.get(dtype, "fp16"))
    device = runner.device
    warn_if_late(device)  # torch resizes the images, and runs the backbone unless OpenVINO does
    cuda = device.type == "cuda"
    bs = fit_batch(backbone, image_size, batch_size or default_extract_batch(device, image_size),
                   len(views), device)
    indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    if cuda and isinstance(images, torch.Tensor) and images.nbytes <= 2**30:
        images = images.to(device)
    n = len(indices)
    # The weights' own mean and std, as every other path (a module torchvision does not name: ImageNet's).
    name = getattr(backbone, "name", None)
    norm = normalization(name) if name in list_backbones() else (IMAGENET_MEAN, IMAGENET_STD)
    out = torch.empty(n, len(views), backbone.num_features, device=device if cuda else "cpu")
    with torch.inference_mode(), _cudnn_benchmark(cuda):
        for i in tqdm(range(0, n, bs), desc=desc, disable=not progress, leave=False, file=sys.stdout):
            chunk = _rows(images, indices[i : i + bs])
            if chunk.device != device:
                chunk = (chunk.pin_memory() if cuda else chunk).to(device, non_blocking=True)
            x = preprocess(chunk, image_size, *norm, channels_last=runner.channels_last)
            x = torch.cat([x.flip(-1) if v == "flipped" else x for v in views])
            f = runner(x).to(out.device)
            out[i : i + len(chunk)] = f.view(len(views), len(chunk), -1).transpose(0, 1)
    return out.cpu()


# --------------------------------------------------------------------------- which views
def epoch_draw(n: int, n_views: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training epoch's (order [n], view of each sample [n]), from (seed, epoch) alone: what
    ``FeatureLoader`` iterates, and what ``plan_views`` extracts beforehand."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=g)
    return order, torch.randint(n_views, (n,), generator=g)


def plan_views(n: int, seed: int, epochs: int, n_views: int = 2) -> torch.Tensor:
    """bool [n, n_views]: the views that ``epochs`` training epochs will sample (one per image at
    1 epoch, about 1.5 at 2), or all of them from ``ALL_VIEWS_FROM_EPOCHS`` epochs on."""
    if epochs >= ALL_VIEWS_FROM_EPOCHS:
        return torch.ones(n, n_views, dtype=torch.bool)
    needed = torch.zeros(n, n_views, dtype=torch.bool)
    for epoch in range(epochs):
        needed[torch.arange(n), epoch_draw(n, n_views, seed, epoch)[1]] = True
    return needed


# --------------------------------------------------------------------------- cache
def cache_key(images: torch.Tensor | FolderImages, targets, backbone: str, weights, image_size: int,
              views: tuple[str, ...], precision: str, weights_digest: str | None = None,
              engine: str = "torch") -> str:
    """A hash of everything the features depend on: the image bytes themselves (a folder's
    files by path, size and modification time), targets, backbone, weights, size, views, and the
    engine and precision it ran in.

    ``weights_digest`` (``checkpoint.backbone_fingerprint``, a hash of the backbone's tensors) is
    what names the weights for sure: two random backbones are both ``weights=None``.
    """
    h = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        h.update(images.contiguous().numpy().data)
    else:
        h.update(images.fingerprint())
    h.update(np.asarray(targets, dtype=np.int64).tobytes())
    desc = dict(format=CACHE_FORMAT, n=len(targets), shape=list(images.shape), backbone=backbone,
                weights=str(weights), weights_digest=weights_digest, image_size=image_size,
                views=list(views), precision=precision, engine=engine)
    if normalization(backbone) != (IMAGENET_MEAN, IMAGENET_STD):  # ImageNet's: the keys stay as they were
        desc["normalization"] = normalization(backbone)
    h.update(json.dumps(desc, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _read_cache(path: Path, key: str, targets: torch.Tensor, n_views: int):
    """(features, present) if the file is whole and is the one asked for; else None with a notice.
    Read with ``weights_only=True``: a pickle planted in the cache folder is refused, never run."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats, present = blob["features"], blob["present"]
        ok = (blob.get("key") == key and feats.dtype == torch.float32 and feats.dim() == 3
              and tuple(feats.shape[:2]) == (len(targets), n_views) and present.dtype == torch.bool
              and present.shape == feats.shape[:2] and torch.equal(blob["targets"], targets)
              and not feats[present].isnan().any())  # a view recorded as there must be there
        reason = "its key, shape or targets do not match"
    except Exception as e:  # truncated, not a torch file, a pickle, missing fields
        ok, reason = False, f"unreadable ({e.__class__.__name__})"
    if not ok:
        log.warning("feature cache %s is stale or damaged (%s); rebuilding it", path, reason)
        return None
    return feats, present


class FeatureStore:
    """A source's features [N, V, D] for one backbone, engine and precision, as far as they have
    been extracted (``present`` [N, V]), kept in one cache file under ``cache_dir``.

    ``ensure(needed)`` extracts the missing views among ``needed`` and rewrites the file: a run
    extracts what its epochs sample (``plan_views``), a longer run or a resumed one adds the rest.
    ``use_cache=False`` keeps everything in memory. ``info`` is JSON for metrics.json.
    """

    def __init__(self, cfg, ds, backbone, device, views=VIEWS_TRAIN, cache_dir=None, use_cache=True):
        self.cfg, self.backbone, self.device = cfg, backbone, torch.device(device)
        self.views, self.use_cache, self.runner = tuple(views), use_cache, None
        self.images = images_uint8(ds, cfg.image_size)
        self.targets = torch.as_tensor(ds.targets, dtype=torch.long)
        self.split = getattr(ds, "split", "")
        self.cache_dir = Path(cache_dir or Path(cfg.data_root) / "features")
        self._digest = backbone_fingerprint(backbone)
        engine, why_engine = resolve_engine(getattr(cfg, "engine", "auto"), self.device)
        precision, why = resolve_precision(getattr(cfg, "precision", "auto"), self.device, cfg.data_root)
        self.reason = f"engine {engine}: {why_engine}; precision {precision}: {why}"
        self._open(engine, precision)

    def _open(self, engine: str, precision: str) -> None:
        """Point at the cache file of (engine, precision) and load what it holds."""
        self.engine, self.precision = engine, precision
        cfg = self.cfg
        self.key = cache_key(self.images, self.targets.tolist(), cfg.backbone, cfg.weights,
                             cfg.image_size, self.views, precision, self._digest, engine)
        self.path = self.cache_dir / f"{cfg.backbone}-{cfg.image_size}px-{self.key}.pt"
        found = _read_cache(self.path, self.key, self.targets, len(self.views)) if self.use_cache else None
        n, v = len(self.targets), len(self.views)
        self.features, self.present = found or (torch.full((n, v, self.backbone.num_features), float("nan")),
                                                torch.zeros(n, v, dtype=torch.bool))
        self.hit, self.extracted_now = found is not None, 0

    def ensure(self, needed: torch.Tensor | None = None) -> int:
        """Extract the views in ``needed`` (bool [N, V]; None: all) that are not there yet; save.
        Returns how many image views were extracted."""
        needed = torch.ones_like(self.present) if needed is None else needed.to(torch.bool)
        missing = needed & ~self.present
        if not missing.any():
            return 0
        if self.runner is None:
            # The engine as asked (auto may fall back to torch), the precision as resolved.
            self.runner = make_runner(self.backbone, self.device, self.cfg.image_size,
                                      getattr(self.cfg, "engine", "auto"), self.precision, self.cfg.data_root)
            if self.runner.engine != self.engine:  # OpenVINO failed: torch's features, torch's file
                self.reason = self.runner.reason
                self._open(self.runner.engine, self.precision)
                return self.ensure(needed)
        count = 0
        # Images missing both views run with both in one batch, the others with their one view.
        for view_ids in ([0, 1], [0], [1]) if len(self.views) == 2 else ([0],):
            rows = (missing[:, view_ids].all(1) & (missing.sum(1) == len(view_ids))).nonzero().flatten()
            if len(rows):
                names = tuple(self.views[i] for i in view_ids)
                f = extract(self.backbone, self.images, self.cfg.image_size, self.device, names,
                            self.cfg.extract_batch_size, progress=self.cfg.progress,
                            desc=f"extract {self.split}".strip(), runner=self.runner, indices=rows)
                self.features[rows[:, None], torch.tensor(view_ids)] = f
                self.present[rows[:, None], torch.tensor(view_ids)] = True
                count += f.shape[0] * f.shape[1]
        self.extracted_now += count
        self._save()
        return count

    def _save(self) -> None:
        if not self.use_cache:
            return
        try:
            atomic_save({"key": self.key, "format": CACHE_FORMAT, "views": list(self.views),
                         "features": self.features, "present": self.present,
                         "targets": self.targets}, self.path)
        except CifarTLError as e:  # a cache that cannot be written (full disk ...) only costs time
            self.use_cache = False  # one notice, not one per later extraction
            log.warning("feature cache not saved: %s; continuing without it (set CIFAR_TL_DATA to "
                        "a writable folder)", e)

    @property
    def info(self) -> dict:
        """What metrics.json records: file, hit, engine, precision and why, views extracted."""
        return {"path": str(self.path), "hit": self.hit and self.extracted_now == 0,
                "engine": self.engine, "precision": self.precision, "reason": self.reason,
                "views_extracted": int(self.present.sum()), "views_available": self.present.numel(),
                "views_extracted_now": self.extracted_now}


def cached_features(cfg, ds, backbone, device, views: tuple[str, ...], cache_dir=None,
                    use_cache: bool = True, epochs: int | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Features [N, V, D] and targets [N] of a source, from the cache when it holds them.

    ``epochs=None`` extracts every view; ``epochs=E`` only those E training epochs sample with
    ``cfg.seed`` (the others are NaN: pass ``FeatureStore`` to ``FeatureLoader`` to add them on
    demand). ``info`` (``FeatureStore.info``) says whether the cache was hit, where it is, the
    engine and precision and why, and how many views were extracted of how many.
    """
    store = FeatureStore(cfg, ds, backbone, device, views, cache_dir, use_cache)
    store.ensure(None if epochs is None else plan_views(len(store.targets), cfg.seed, epochs, len(views)))
    return store.features, store.targets, store.info


# --------------------------------------------------------------------------- loader
class FeatureLoader:
    """Batches of (features, labels) from cached features, kept on the device.

    Training: each epoch a fresh permutation, and for every sample one of its views at random,
    which is exactly what ``RandomHorizontalFlip(p=0.5)`` gives the tutorial's head. Call
    ``set_epoch`` so that an epoch's order depends only on (seed, epoch): a resumed run sees the
    same batches as an uninterrupted one. With a ``store`` (``FeatureStore``) the views an epoch
    samples are extracted first if they are missing. Evaluation: in order, first view, nothing
    dropped.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 train: bool, seed: int = 0, device="cpu", store: FeatureStore | None = None):
        self.features = features.to(device)
        self.targets = targets.to(device)
        self.batch_size, self.train, self.seed, self.store = batch_size, train, seed, store
        self.epoch = 0
        self.dataset = self.targets  # len(loader.dataset) works as for a DataLoader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.targets)
        if self.train and n >= self.batch_size:
            return n // self.batch_size  # drop_last, as the tutorial's loader
        return -(-n // self.batch_size)

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.targets)
        if not self.train:
            return torch.arange(n), torch.zeros(n, dtype=torch.long)
        order, views = epoch_draw(n, self.features.shape[1], self.seed, self.epoch)
        if self.store is not None:
            needed = torch.zeros_like(self.store.present)
            needed[torch.arange(n), views] = True
            if self.store.ensure(needed):
                self.features = self.store.features.to(self.targets.device)
        return order, views

    def __iter__(self):
        order, views = (t.to(self.targets.device) for t in self._draw())
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.features[idx, views[idx]], self.targets[idx]
