"""cifar_tl: transfer learning in computer vision with torchvision, taught step by step."""

__version__ = "0.1.0"

from . import checkpoint, data, engine, features, models, viz  # noqa: E402
from .config import Config, resolve_device  # noqa: E402
from .data import (  # noqa: E402
    build_datasets,
    build_source,
    collate_fn,
    eval_transform,
    make_loader,
    train_transform,
)
from .engine import evaluate, fit, predict, train_one_epoch  # noqa: E402
from .errors import AssetMissingError, CheckpointError, CifarTLError, ConfigError, ImageError  # noqa: E402
from .features import FeatureLoader, cached_features, extract  # noqa: E402
from .models import BACKBONES, MLPHead, TransferModel, build_backbone  # noqa: E402

__all__ = [
    "AssetMissingError", "BACKBONES", "CheckpointError", "CifarTLError", "Config", "ConfigError",
    "FeatureLoader", "ImageError", "MLPHead", "TransferModel", "build_backbone", "build_datasets",
    "build_source", "cached_features", "checkpoint", "collate_fn", "data", "engine", "eval_transform",
    "evaluate", "extract", "features", "fit", "make_loader", "models", "predict", "resolve_device",
    "train_one_epoch", "train_transform", "viz",
]
