"""cifar_tl: transfer learning in computer vision with torchvision, taught step by step."""

from __future__ import annotations

import importlib

from . import threads

__version__ = "0.1.0"

# Before anything imports torch: how its CPU threads wait for work (OpenMP reads it once, when
# torch loads it). Never over a choice of the user's; too late, and so nothing, if torch is loaded.
threads.set_defaults()

# Names are imported on first use (PEP 562): `python -m cifar_tl` starts without importing torch
# here, so a Ctrl-C in the first seconds reaches the command line's own handler, and
# `import cifar_tl` stays cheap. Each name -> the module that defines it.
_NAMES = {
    "Config": "config", "resolve_device": "devices",
    "build_datasets": "data", "build_source": "data", "collate_fn": "data", "eval_transform": "data",
    "make_loader": "data", "train_transform": "data",
    "evaluate": "engine", "fit": "engine", "predict": "engine", "train_one_epoch": "engine",
    "AssetMissingError": "errors", "CheckpointError": "errors", "CifarTLError": "errors",
    "ConfigError": "errors", "DataError": "errors", "ImageError": "errors", "Interrupted": "errors",
    "StorageError": "errors", "TrainingDiverged": "errors", "UnknownBackbone": "errors",
    "FeatureLoader": "features", "cached_features": "features", "extract": "features",
    "BACKBONES": "models", "MLPHead": "models", "TransferModel": "models", "build_backbone": "models",
    "enable_notices": "console", "tell": "console", "notebook_config": "parameters", "say_setup": "parameters",
}
_MODULES = ("checkpoint", "config", "console", "data", "engine", "features", "inference", "models",
            "pack", "parameters", "pipeline", "preprocess", "storage", "threads", "viz", "widgets")

__all__ = sorted([*_NAMES, *_MODULES])


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'cifar_tl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
