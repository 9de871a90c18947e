"""Which device a run uses (CUDA, then Apple's MPS, then the CPU), and the profile ``auto`` picks for it."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_auto() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "full", f"CUDA is available: {torch.cuda.get_device_name(0)}"
    return "cpu", "no CUDA GPU found; the full 300 px run would take hours on a CPU"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA, then Apple's MPS, then the CPU."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not mps:
        raise ConfigError("--device mps was asked for, but MPS is not available here")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)
