"""Checking what a person gave before any work: a notebook's parameters cell, and options that
would have no effect."""

from __future__ import annotations

import logging
import math

from .config import FINE_TUNING_ONLY, PROFILE_FIELDS, Config
from .errors import ConfigError

log = logging.getLogger(__name__)


def notebook_config(profile: str | None = None, **params) -> Config:
    """The Config of a notebook's parameters cell, checked at once:
    ``cfg = notebook_config(profile, epochs=epochs, tutorial_images=tutorial_images)``.

    ``params`` are the cell's values, as papermill's ``-p name value`` sets them. Those named like
    a Config field (``epochs``, ``batch_size``, ``lr`` ...) override the profile's value, unless
    None ("the profile's"); 0 stays 0 and is refused, it never becomes the profile's value. The
    notebook's own parameters are checked by kind: a whole number must be positive (a count),
    or at least 0 when its name ends in ``_index``; a float must be finite.

    Raises:
        ConfigError: one line naming the parameter and its value.
    """
    fields = set(Config.fields())
    for name, value in params.items():
        if name not in fields:
            _check_own(name, value)
    overrides = {k: v for k, v in params.items() if k in fields and v is not None}
    try:
        return Config.for_profile(profile, **overrides).validate()
    except ConfigError as e:
        raise ConfigError(f"notebook parameters: {e}") from None


def _check_own(name: str, value) -> None:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        least = 0 if name.endswith("_index") else 1
        if value < least:
            kind = "an index (0 or more)" if least == 0 else "a positive whole number"
            raise ConfigError(f"notebook parameters: {name} must be {kind}, got {value!r}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"notebook parameters: {name} must be a finite number, got {value!r}")


def ineffective(cfg: Config, given=None) -> list[str]:
    """The fine-tuning options that ``cfg`` sets although nothing is unfrozen. ``given``: the names
    a person typed (the CLI); None: those that differ from the profile's value (the library)."""
    if cfg.unfreeze != 0:
        return []
    if given is None:
        base = Config(**PROFILE_FIELDS.get(cfg.profile, {}))
        given = [k for k in FINE_TUNING_ONLY if getattr(cfg, k) != getattr(base, k)]
    return [k for k in FINE_TUNING_ONLY if k in given]


def note_ineffective(cfg: Config) -> None:
    """A notice naming the fine-tuning options ``cfg`` sets that nothing unfrozen would use."""
    idle = ineffective(cfg)
    if idle:
        log.info("note: %s only act when fine-tuning (unfreeze > 0); the backbone stays frozen and "
                 "they are ignored", ", ".join(idle))


def check_config(cfg, what: str) -> None:
    """ConfigError unless ``cfg`` is a Config (or None): a dict of options, say."""
    if cfg is not None and not isinstance(cfg, Config):
        raise ConfigError(f"{what} needs a Config, got a {type(cfg).__name__}: build one with "
                          "Config.for_profile(profile, **options)")


def say_setup(cfg: Config, device) -> None:
    """The line every notebook prints under its parameters: the profile, the data, the backbone
    and its weights, the image size and the device, in English and then in Chinese."""
    from .console import tell

    weights = cfg.weights or "random"
    tell(f"profile {cfg.profile}: data {cfg.source}, backbone {cfg.backbone} ({weights} weights), "
         f"{cfg.image_size} px, device {device}",
         f"预设配置 {cfg.profile}：数据 {cfg.source}，主干网络 {cfg.backbone}（权重：{cfg.weights or '随机'}），"
         f"{cfg.image_size} px，设备 {device}")
