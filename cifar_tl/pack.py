"""A teacher's feature pack: every split's frozen features in one safetensors file, so that a class
trains heads on any machine with no images and no backbone run.

A pack holds, for the training split (both views: original and flipped), the validation split and
the test split, the features [N, V, D], the labels [N] and the split's indices into its source; its
metadata holds the class names, a digest of each split's images, the backbone, its weights and
their digest, the image size, the engine and precision it ran in, and the Config it was made with
(the file itself, checked: ``packfile``). A run from a pack must fit it (``check_fits``): the
same data, split and backbone, or it is refused naming each difference.

The features are stored as the backbone computed them: in bf16 or fp16 when it ran in that
precision (its outputs are exactly those numbers: half the size of float32, nothing lost), in
float32 otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from . import __version__, data, features, packfile, storage
from .checkpoint import NAMED_WEIGHTS, backbone_fingerprint, weights_digest
from .config import PACK_FIELDS, PROFILE_FIELDS, Config, default_data_root
from .devices import resolve_device
from .errors import ConfigError, DataError
from .features import FeatureLoader
from .models import MLPHead, TransferModel, build_backbone
from .packfile import FORMAT, FORMAT_VERSION, SPLITS, STORED, SUFFIX, PackSplit, read_meta, write
from .synthetic import CLASSES as SYNTHETIC_CLASSES

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------- making one
def make_pack(cfg: Config, path: str | Path | None = None) -> tuple[Path, dict]:
    """Extract the features of every split as ``cfg`` says and write them to ``path`` (default:
    ``<data root>/packs/<source>-<backbone>-<size>px-<precision>.safetensors``). Extraction goes
    through the feature cache (``features.FeatureStore``): a pack made twice extracts once.
    Returns (the file, its metadata)."""
    cfg = cfg.validate()
    if cfg.features is not None:
        raise ConfigError("pack extracts features from images: drop --features")
    device = resolve_device(cfg.device)
    if path is not None:
        storage.check_writable(Path(path).parent)  # said now, not after the extraction
    backbone = build_backbone(cfg.backbone, cfg.weights, cfg.seed, cfg.progress).to(device)
    tensors, info, made = {}, {}, {}
    for name, ds in data.build_datasets(cfg)._asdict().items():
        if ds is None:
            continue
        views = features.VIEWS_TRAIN if name == "train" else features.VIEWS_TEST
        store = features.FeatureStore(cfg, ds, backbone, device, views, use_cache=cfg.cache)
        store.ensure()
        f = _as_computed(store.features, store.precision)
        tensors[f"{name}.features"], tensors[f"{name}.labels"] = f, store.targets.clone()
        tensors[f"{name}.index"] = torch.as_tensor(getattr(ds, "indices", range(len(ds))), dtype=torch.long)
        info[name] = {"n": len(ds), "views": list(views), "images_sha256": _images_digest(store.images),
                      "engine": store.engine, "precision": store.precision, "dtype": _dtype_name(f.dtype)}
        made = made or {"engine": store.engine, "precision": store.precision, "classes": ds}
    ds = made.pop("classes")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size,
            "weights_sha256": weights_digest(cfg.weights) if cfg.weights not in NAMED_WEIGHTS else None,
            "backbone_fingerprint": backbone_fingerprint(backbone), "feature_dim": backbone.num_features,
            **made, "device": device.type, "class_names": list(ds.classes),
            "coarse_classes": getattr(ds, "coarse_classes", None),
            "fine_to_coarse": getattr(ds, "fine_to_coarse", None), "splits": info,
            "versions": {"cifar_tl": __version__, "torch": str(torch.__version__)}}
    path = Path(path) if path is not None else default_path(cfg, meta["precision"])
    write(path, tensors, meta)
    return path, meta




def _as_computed(f: torch.Tensor, precision: str) -> torch.Tensor:
    """``f`` in the precision the backbone ran in when that holds it exactly, else float32."""
    narrow = f.to(STORED.get(precision, torch.float32))
    return narrow if torch.equal(narrow.float(), f) else f


def _dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in STORED.items() if v == dtype)


def _images_digest(images) -> str:
    """The sha256 of a split's images: their bytes, or a folder's files by path, size and time."""
    if isinstance(images, torch.Tensor):
        return hashlib.sha256(images.contiguous().numpy().data).hexdigest()
    return hashlib.sha256(images.fingerprint()).hexdigest()


def default_path(cfg: Config, precision: str) -> Path:
    source = data.check_source(cfg.source)[0]
    return Path(cfg.data_root) / "packs" / f"{source}-{cfg.backbone}-{cfg.image_size}px-{precision}{SUFFIX}"


# --------------------------------------------------------------------------- fitting a run
def _packed_config(meta: dict, path) -> Config:
    try:
        return Config.from_dict(meta["config"])
    except ConfigError as e:
        raise DataError(f"{path}: a damaged feature pack ({e}); copy it again") from None


def check_fits(meta: dict, cfg: Config, path="feature pack") -> None:
    """Refuse (ConfigError, one line) a pack made with other data or another backbone than
    ``cfg`` asks for, naming every difference."""
    packed = _packed_config(meta, path)
    diff = packed.diff(cfg, ignore=tuple(f for f in Config.fields() if f not in PACK_FIELDS))
    known = {"cifar100": data.cifar100_meta()["fine"], "synthetic": SYNTHETIC_CLASSES}.get(cfg.source)
    if known is not None and len(known) != len(meta["class_names"]):
        diff["num_classes"] = (len(meta["class_names"]), len(known))
    if diff:
        raise ConfigError(f"{path} was made for other options: {Config.describe_diff(diff, 'pack has', 'given')} "
                          "(drop those options to use the pack's, or make a pack with them)")


def load(path: str | Path, cfg: Config | None = None) -> dict[str, PackSplit | None]:
    """``packfile.load``: every split of a pack, checksum verified; with ``cfg``, the pack must fit
    it first (``check_fits``, before any feature is read)."""
    if cfg is not None:
        check_fits(read_meta(path), cfg, path)
    return packfile.load(path)


def config_for(path: str | Path, **changes) -> Config:
    """The Config to train from a pack: its profile's training settings, the pack's data and
    backbone, then ``changes``. ``Config.for_profile(...).replace(features=path)`` works too when
    it fits the pack."""
    packed = _packed_config(read_meta(path), path)
    base = Config(**{**PROFILE_FIELDS.get(packed.profile, {}), "profile": packed.profile})
    fit = {f: getattr(packed, f) for f in PACK_FIELDS}
    return base.replace(**fit, features=str(path)).replace(**changes)


# --------------------------------------------------------------------------- finding one
def find_packs(root: str | Path | None = None) -> list[Path]:
    """The feature packs in ``root`` (default ``$CIFAR_TL_DATA``) and its packs/ folder; a file
    there that is not a whole pack is left out with a notice."""
    root = Path(root or default_data_root())
    found = []
    for folder in (root, root / "packs"):
        for p in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else ():
            try:
                read_meta(p)
                found.append(p)
            except DataError as e:
                log.warning("%s", e)
    return found


def describe(meta: dict) -> str:
    """One line: what a pack holds and how it was made."""
    cfg = meta["config"]
    sizes = ", ".join(f"{s} {meta['splits'][s]['n']:,}" + (" x 2 views" if s == "train" else "")
                      for s in SPLITS if s in meta["splits"])
    return (f"{cfg.get('source')}: {sizes}; {meta['backbone']} ({meta.get('weights') or 'random'} weights), "
            f"{meta['image_size']} px, {meta['precision']} on {meta.get('device')} ({meta['engine']}), "
            f"{len(meta['class_names'])} classes")


# --------------------------------------------------------------------------- a run from a pack
# pipeline.run's steps when ``cfg.features`` names a pack: the same run, without images or backbone.
def load_data(r) -> None:
    """The pack's splits, checked to fit the run, in place of the datasets."""
    splits = load(r.cfg.features, r.cfg)
    r.train_ds, r.val_ds, r.test_ds = splits["train"], splits["val"], splits["test"]


def build_model(r) -> None:
    """A fresh head only. head.pt names the backbone, weights and image size from the config, and
    the backbone's fingerprint from the pack, so that evaluate and predict rebuild the very backbone."""
    meta = r.train_ds.meta
    r.fingerprint = meta["backbone_fingerprint"]
    head = MLPHead(meta["feature_dim"], len(r.train_ds.classes), r.cfg.hidden, r.cfg.standardizes())
    r.model = TransferModel(torch.nn.Identity(), head).to(r.device)


def make_loaders(r, judged=("val", "test")) -> None:
    """The head's loaders on the pack's features. The head's statistics come from the views the
    run's epochs sample (``features.plan_views``), as a run that extracts its own features fits them."""
    cfg, train, meta = r.cfg, r.train_ds, r.train_ds.meta
    if cfg.standardizes():  # (a copy of the sampled views: 230 MB at CIFAR-100's size, so only then)
        r.stats_source = train.features[features.plan_views(len(train), cfg.seed, cfg.epochs)]
    r.train_loader = FeatureLoader(train.features, train.labels, cfg.batch_size, train=True, seed=cfg.seed,
                                   device=r.device)
    for split in judged:
        ds = getattr(r, f"{split}_ds")
        if ds is not None:
            loader = FeatureLoader(ds.features, ds.labels, max(cfg.batch_size, 256), train=False, device=r.device)
            setattr(r, f"{split}_loader", loader)
    r.trainee = r.model.head
    r.backbone_run = {"engine": meta["engine"], "precision": meta["precision"],
                      "backbone_reason": f"features from the pack {cfg.features}, made on {meta['device']}"}
    r.cache_info["pack"] = {"path": cfg.features, "dtype": meta["splits"]["train"]["dtype"]}
    log.info("features: from the pack %s (%s, %s on %s)", cfg.features, meta["engine"], meta["precision"], meta["device"])
