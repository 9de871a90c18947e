"""The one Config dataclass: every option, its role, its checks, the profiles and device selection.

This is the only module that knows which options exist. Other modules ask it by role: what a
resumed run may change is ``Config.resumable()`` (compute, machine and ``epochs``); what a
checkpoint must agree on is ``cfg.diff(other, roles=("model",))``; what ``evaluate`` takes from
this machine is the ``machine`` role.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .devices import resolve_auto
from .errors import ConfigError
from .profiles import PROFILE_FIELDS

log = logging.getLogger(__name__)

PROFILES = ("full", "cpu", "smoke", "auto")
ROLES = ("data", "model", "training", "compute", "machine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "openvino")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Bounds that keep a typo from allocating the machine away (issue: --image-size 3000000).
MAX_IMAGE_SIZE = 4096
MAX_SEED = 2**32 - 1
# Options that act only when fine-tuning (``unfreeze`` > 0); with nothing unfrozen they change nothing.
FINE_TUNING_ONLY = ("head_epochs", "lr_decay", "weight_decay", "bn_train")


def default_data_root() -> str:
    """Where datasets and the feature cache live: $CIFAR_TL_DATA, else ~/.cache/cifar_tl."""
    return os.environ.get("CIFAR_TL_DATA") or str(Path.home() / ".cache" / "cifar_tl")


def _f(default, role: str, *, factory=None, resumable: bool = False):
    """A field with its role (one of ``ROLES``). ``resumable`` marks a training field that a
    resumed run may still change (only ``epochs``: train a run longer)."""
    meta = {"role": role, "resumable": resumable or role in ("compute", "machine")}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Everything a run depends on. Every checkpoint and metrics file stores ``cfg.to_dict()``.

    The defaults are the source tutorial's recipe (the ``full`` profile).
    """

    profile: str = _f("full", "profile")
    # data: which images, how many
    source: str = _f("cifar100", "data")  # cifar100 | synthetic | folder:PATH
    train_size: int | None = _f(None, "data")  # None = the whole split; else a class-balanced subset
    test_size: int | None = _f(None, "data")
    # Held out of the training subset, class-balanced and seeded: what every choice (learning
    # rate, head design, epochs) is judged on, so that the test split is looked at once, at the
    # end. None = 10% of the training subset (5,000 of CIFAR-100's 50,000); 0 = none, as the
    # tutorial had (it judged on test). An image folder's own val/ is used when it has one.
    val_size: int | None = _f(None, "data")
    # A teacher's feature pack (`python -m cifar_tl pack`): the head trains from its features, with
    # no images and no backbone run (README, "Teaching a class"); None: extract them here.
    features: str | None = _f(None, "data")
    # model: what the head is trained on, and the head itself
    backbone: str = _f("efficientnet_v2_s", "model")  # any torchvision classification model
    weights: str | None = _f("imagenet", "model")  # "imagenet", None (random) or a state-dict file
    image_size: int = _f(300, "model")  # EfficientNetV2-S was trained at 300 px (the tutorial: 32 -> 300)
    hidden: tuple[int, ...] = _f((256, 256), "model")  # the tutorial's head: width-256-256-classes
    # A per-feature z-score before the head, fitted on the training features. "auto": only for a
    # random backbone, whose nearly constant features an MLP cannot learn from raw (README,
    # "Differences"); pretrained features feed the tutorial's bare head.
    standardize: bool | str = _f("auto", "model")
    # training
    batch_size: int = _f(8, "training")  # the tutorial's value; the cached path can afford far more
    lr: float = _f(1e-3, "training")  # Adam, as in the tutorial
    epochs: int = _f(1, "training", resumable=True)
    seed: int = _f(0, "training")
    cache: bool = _f(True, "training")  # the fast path: frozen features extracted once, head trained on them
    unfreeze: int | str = _f(0, "training")  # top stages of the backbone to fine-tune: 0 (frozen), K or "all"
    head_epochs: int | None = _f(None, "training")  # head-only epochs before unfreezing (None: 1 when unfreeze)
    lr_decay: float = _f(0.3, "training")  # each unfrozen stage down trains at this fraction of the one above
    weight_decay: float = _f(0.0, "training")  # AdamW's, when fine-tuning; 0 keeps the tutorial's Adam
    bn_train: bool = _f(False, "training")  # let BatchNorm statistics of unfrozen stages move
    # compute: how the frozen backbone computes; results agree within numerical precision, and
    # `evaluate` keeps the trained values (so it reproduces the run's accuracy) unless told otherwise
    precision: str = _f("auto", "compute")  # of the frozen backbone: auto | fp32 | bf16 | fp16
    engine: str = _f("auto", "compute")  # of the frozen backbone on a CPU: auto | torch | openvino
    # machine: where it runs and where its files are; the results do not depend on them
    data_root: str = _f(None, "machine", factory=default_data_root)
    device: str = _f("auto", "machine")  # auto | cpu | cuda | mps
    num_workers: int = _f(0, "machine")  # DataLoader workers of the tutorial path; 0 works everywhere
    extract_batch_size: int | None = _f(None, "machine")  # None = sized to the device
    progress: bool = _f(True, "machine")

    # ------------------------------------------------------------------ building
    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> Config:
        """Build the config of a profile, then apply overrides.

        ``profile=None`` reads ``$CIFAR_TL_PROFILE``, falling back to ``auto``. ``auto`` picks
        ``full`` when CUDA is available and ``cpu`` otherwise, and says why (a logging notice).
        """
        name = profile or os.environ.get("CIFAR_TL_PROFILE") or "auto"
        if name not in PROFILES:
            raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
        if name == "auto":
            name, why = resolve_auto()
            log.info("profile: auto -> %s (%s)", name, why)
        if name == "cpu":
            log.info("%s", cpu_trades())
        cfg = cls(profile=name, **PROFILE_FIELDS[name])
        return cfg.replace(**overrides) if overrides else cfg

    def replace(self, **changes) -> Config:
        """A copy with some fields changed: ``cfg.replace(epochs=3)``. Unknown names are a ConfigError."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
        if "hidden" in changes and changes["hidden"] is not None:
            changes["hidden"] = tuple(changes["hidden"])
        if "weights" in changes:
            changes["weights"] = normalize_weights(changes["weights"])
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):  # a folder of images
            self.source = f"folder:{os.fspath(self.source)}"
        for name in self.fields():  # numpy scalars and paths, as notebooks make them
            setattr(self, name, _plain(getattr(self, name)))
        self.weights = normalize_weights(self.weights)
        if isinstance(self.unfreeze, str) and self.unfreeze.strip().isdecimal():
            self.unfreeze = int(self.unfreeze)
        if isinstance(self.hidden, (list, tuple)):
            self.hidden = tuple(_plain(h) for h in self.hidden)
        if isinstance(self.features, os.PathLike) or (isinstance(self.features, str) and self.features.strip()):
            self.features = str(Path(self.features).expanduser().resolve())  # works from any folder

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """A Config from a stored dict (config.json, a checkpoint); unknown keys of older or newer
        versions are ignored. Raises ConfigError when ``d`` is not a dict of plausible values."""
        if not isinstance(d, dict):
            raise ConfigError(f"a stored config must be a JSON object, got {type(d).__name__}")
        known = set(cls.fields())
        if d.get("amp") is False and "precision" not in d:  # written before `precision` existed
            d = {**d, "precision": "fp32"}
        if "val_size" not in d:  # written before the validation split: it trained on every image
            d = {**d, "val_size": 0}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"a stored config is damaged ({e})") from None

    # ------------------------------------------------------------------ roles and differences
    @classmethod
    def fields(cls, *roles: str) -> tuple[str, ...]:
        """Field names, all of them or those of the given roles, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if not roles or f.metadata["role"] in roles)

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        """What a resumed run may change: the machine, and how long it trains."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["resumable"])

    def select(self, *roles: str) -> dict:
        """{name: value} of the fields of the given roles."""
        return {k: getattr(self, k) for k in self.fields(*roles)}

    def diff(self, other: Config, roles: tuple[str, ...] = ROLES, ignore: tuple[str, ...] = ()) -> dict:
        """{name: (self's value, other's value)} for every field of ``roles`` that differs."""
        return {k: (getattr(self, k), getattr(other, k)) for k in self.fields(*roles)
                if k not in ignore and getattr(self, k) != getattr(other, k)}

    @staticmethod
    def describe_diff(diff: dict, mine: str = "has", theirs: str = "given") -> str:
        """'image_size: has 32, given 48; backbone: ...' for a message."""
        return "; ".join(f"{k}: {mine} {a!r}, {theirs} {b!r}" for k, (a, b) in diff.items())

    # ------------------------------------------------------------------ derived
    def standardizes(self) -> bool:
        """Whether the head standardises its features: ``standardize``, with "auto" meaning "only
        for a random backbone" (``weights`` None)."""
        return self.weights is None if self.standardize == "auto" else bool(self.standardize)

    def val_count(self, n_train: int) -> int:
        """How many of ``n_train`` training images the validation split holds out: ``val_size``,
        or 10% of them when it is None."""
        return round(0.1 * n_train) if self.val_size is None else self.val_size

    def head_phase_epochs(self) -> int:
        """Head-only epochs on cached features before fine-tuning: 0 for a frozen run, else
        ``head_epochs`` (default 1)."""
        return 0 if self.unfreeze == 0 else (self.head_epochs or 1)

    def total_epochs(self) -> int:
        """Every epoch a run trains: the head phase, then ``epochs`` (fine-tuning when ``unfreeze``)."""
        return self.head_phase_epochs() + self.epochs

    # ------------------------------------------------------------------ checks
    def validate(self) -> Config:
        """Raise ConfigError (one line, exit 2 in the CLI) for any value no run can use; return self."""
        for name in ("epochs", "batch_size", "image_size"):
            _positive_int(name, getattr(self, name))
        for name in ("train_size", "test_size", "extract_batch_size", "head_epochs"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.val_size is not None and (not _int(self.val_size) or self.val_size < 0):
            raise ConfigError(f"val-size must be an integer >= 0 (0: no validation split), got {self.val_size!r}")
        if self.standardize not in (True, False, "auto"):
            raise ConfigError(f"standardize must be true, false or 'auto', got {self.standardize!r}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"image-size {self.image_size} is above the {MAX_IMAGE_SIZE} px this "
                              "package accepts (CIFAR images are 32 px; EfficientNetV2-S uses 300)")
        _positive_number("lr", self.lr)
        _positive_number("lr-decay", self.lr_decay, upper=1.0)
        if not _number(self.weight_decay) or not 0 <= self.weight_decay <= 1:  # AdamW's usual: 0.01 to 0.1
            raise ConfigError(f"weight-decay must be a number from 0 to 1, got {self.weight_decay!r}")
        if not _int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer from 0 to 2**32-1, got {self.seed!r}")
        if not _int(self.num_workers) or self.num_workers < 0:
            raise ConfigError(f"num-workers must be an integer >= 0, got {self.num_workers!r}")
        if not isinstance(self.hidden, tuple) or not all(_int(h) and 0 < h <= 65536 for h in self.hidden):
            raise ConfigError(f"hidden must be positive layer widths, got {self.hidden!r}")
        for name in ("cache", "bn_train", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, allowed in (("profile", PROFILES), ("device", DEVICES), ("precision", PRECISIONS),
                              ("engine", ENGINES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ConfigError(f"data-root must be a folder, got {self.data_root!r}")
        parse_unfreeze(self.unfreeze)
        if self.bn_train and self.unfreeze != 0 and self.batch_size < 2:  # before any work, not after the head phase
            raise ConfigError("--bn-train needs --batch-size 2 or more: BatchNorm cannot take statistics of one image")
        if self.features is not None:
            if not isinstance(self.features, str) or not self.features.strip():
                raise ConfigError(f"features must be a feature pack file, got {self.features!r}")
            if self.unfreeze != 0 or not self.cache:
                raise ConfigError(f"{'--unfreeze' if self.unfreeze != 0 else '--no-cache'} runs the backbone on "
                                  "images, and --features trains the head from a pack without them: drop one")
        from . import data, models  # data and model modules know their own names

        data.check_source(self.source)
        models.check_backbone(self.backbone)
        models.check_image_size(self.backbone, self.image_size)
        if _int(self.unfreeze) and self.unfreeze > models.stage_count(self.backbone):
            n = models.stage_count(self.backbone)
            raise ConfigError(f"unfreeze {self.unfreeze}: {self.backbone} has {n} stages; use 0..{n} or all")
        return self


def _plain(v):
    """A numpy or 0-d torch scalar as the Python value it holds, a path as text; else ``v``."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", None) == 0 else v


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(name: str, v) -> None:
    if not _int(v) or v <= 0:
        raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")


def _positive_number(name: str, v, upper: float | None = None) -> None:
    if not _number(v) or v <= 0 or (upper is not None and v > upper):
        bound = f" at most {upper:g}" if upper is not None else ""
        raise ConfigError(f"{name} must be a positive number{bound}, got {v!r}")


def parse_unfreeze(value) -> int | str:
    """0, a positive number of top stages, or "all"; ConfigError otherwise."""
    if value == "all":
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if not _int(value) or value < 0:
        raise ConfigError(f"unfreeze must be 0, a positive number of stages or 'all', got {value!r}")
    return value


def normalize_weights(weights) -> str | None:
    """The one reading of ``weights``: None / "none" / "random" -> None (random initialisation),
    "imagenet" or "synthetic" (any case) -> itself (``synthetic``: pretrained by the package on
    generated images, ``pretrain.py``), anything else -> an absolute path to a state-dict file
    (stored absolute so that a checkpoint works from any folder)."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(f"weights must be 'imagenet', 'synthetic', 'none' or a file, got {weights!r}")
    text = os.fspath(weights).strip()
    if text.lower() in ("none", "random", ""):
        return None
    if text.lower() in ("imagenet", "synthetic"):
        return text.lower()
    return str(Path(text).expanduser().resolve())


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and flips: it depends on (seed, epoch) alone, so a resumed
    run draws exactly the batches of an uninterrupted one."""
    return seed * 100_003 + epoch


# What a feature pack's features depend on (the splits follow from the source, the sizes and the
# seed): a run from a pack must agree on each (``pack.check_fits``), and takes them from the pack.
PACK_FIELDS = ("source", "train_size", "val_size", "test_size", "seed", "backbone", "weights", "image_size")




def cpu_trades() -> str:
    """What the cpu profile gives up against the full one, from the profile's own values."""
    full, cpu = Config(**PROFILE_FIELDS["full"]), Config(**PROFILE_FIELDS["cpu"])
    return (f"cpu profile trades: {cpu.image_size} px instead of {full.image_size} and "
            f"{cpu.train_size:,} of 50,000 training images (class-balanced); the whole test set, "
            f"batch {cpu.batch_size}, Adam {cpu.lr:g}, {cpu.epochs} epoch as in the full run; "
            "expect a few points less accuracy than the full run")
