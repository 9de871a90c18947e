"""The one Config dataclass, its profiles (full, cpu, smoke, auto) and device selection."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError

PROFILES = ("full", "cpu", "smoke", "auto")


def default_data_root() -> str:
    """Where datasets and the feature cache live: $CIFAR_TL_DATA, else ~/.cache/cifar_tl."""
    return os.environ.get("CIFAR_TL_DATA") or str(Path.home() / ".cache" / "cifar_tl")


@dataclass
class Config:
    """Everything a run depends on. Every checkpoint and metrics file stores ``asdict(cfg)``.

    The defaults are the source tutorial's recipe (the ``full`` profile).
    """

    profile: str = "full"
    # data
    source: str = "cifar100"  # cifar100 | synthetic | folder:PATH
    data_root: str = field(default_factory=default_data_root)
    train_size: int | None = None  # None = the whole split; else a class-balanced subset
    test_size: int | None = None
    image_size: int = 300  # EfficientNetV2-S was trained at 300 px (the tutorial resizes 32 -> 300)
    # model
    backbone: str = "efficientnet_v2_s"
    weights: str | None = "imagenet"  # "imagenet" (torchvision's enum), None (random) or a file path
    hidden: tuple[int, ...] = (256, 256)  # the tutorial's head: width-256-256-classes
    standardize: bool = True  # per-feature z-score before the head; see README "Differences"
    # training
    batch_size: int = 8  # the tutorial's value; the cached path can afford far more
    lr: float = 1e-3  # Adam, as in the tutorial
    epochs: int = 1
    seed: int = 0
    # execution
    device: str = "auto"  # auto | cpu | cuda | mps
    cache: bool = True  # the fast path: extract frozen features once, train the head on them
    amp: bool = True  # autocast the frozen backbone on CUDA (bf16/fp16); never on CPU
    num_workers: int = 0  # DataLoader workers of the tutorial path; 0 works everywhere
    extract_batch_size: int | None = None  # None = sized to the device
    progress: bool = True

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> Config:
        """Build the config of a profile, then apply overrides.

        ``profile=None`` reads ``$CIFAR_TL_PROFILE``, falling back to ``auto``. ``auto`` picks
        ``full`` when CUDA is available and ``cpu`` otherwise, and says why.
        """
        name = profile or os.environ.get("CIFAR_TL_PROFILE") or "auto"
        if name not in PROFILES:
            raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
        if name == "auto":
            name, why = resolve_auto()
            print(f"profile: auto -> {name} ({why})")
        if name == "cpu":
            print(CPU_TRADES)
        cfg = cls(profile=name, **_PROFILE_FIELDS[name])
        return cfg.replace(**overrides) if overrides else cfg

    def replace(self, **changes) -> Config:
        """A copy with some fields changed: ``cfg.replace(epochs=3)``."""
        if "hidden" in changes:
            changes["hidden"] = tuple(changes["hidden"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


# What each profile changes from the defaults above, and why.
_PROFILE_FIELDS: dict[str, dict] = {
    # The tutorial, unchanged: a GPU job (about 10.6 GFLOP per image at 300 px).
    "full": {},
    # The same recipe sized for a 2-core CPU in about 12 minutes: 160 px instead of 300 px
    # (3.5x fewer pixels), half the training set (250 images per class), the whole test set.
    # Measured on 2 cores (benchmarks/README.md): 676.8 s in all, 666 s of it extracting
    # 2 x 25,000 + 10,000 images at 160 px; the head's one epoch on cached features takes 3 s.
    "cpu": dict(image_size=160, train_size=25_000),
    # Offline and quick: synthetic CIFAR-like images and a randomly initialised backbone.
    "smoke": dict(
        source="synthetic",
        weights=None,
        image_size=64,
        train_size=1000,
        test_size=500,
        epochs=15,
        batch_size=32,
        amp=False,  # random-backbone features differ only in the 6th digit: keep fp32
    ),
}

CPU_TRADES = (
    "cpu profile trades: 160 px instead of 300 and 25,000 of 50,000 training images "
    "(class-balanced); the whole test set, batch 8, Adam 1e-3, 1 epoch as in the full run; "
    "expect a few points less accuracy than the full run"
)


def resolve_auto() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "full", f"CUDA is available: {torch.cuda.get_device_name(0)}"
    return "cpu", "no CUDA GPU found; the full 300 px run would take hours on a CPU"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device mps was asked for, but MPS is not available here")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)
