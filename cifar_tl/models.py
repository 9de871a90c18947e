"""Models: the backbone registry, the MLP head (with its feature standardisation) and TransferModel."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from .errors import AssetMissingError, CheckpointError, ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    builder: Callable[..., nn.Module]
    weights: tvm.WeightsEnum  # the ImageNet weights "imagenet" stands for


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_v2_s": BackboneSpec(tvm.efficientnet_v2_s, tvm.EfficientNet_V2_S_Weights.IMAGENET1K_V1),
    "efficientnet_b0": BackboneSpec(tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": BackboneSpec(tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "resnet18": BackboneSpec(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": BackboneSpec(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "convnext_tiny": BackboneSpec(tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1),
}


def check_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def min_image_size(name: str) -> int:
    """The smallest input the backbone accepts, from torchvision's weights metadata."""
    return max(check_backbone(name).weights.meta["min_size"])


def weights_file(name: str) -> Path:
    """Where torchvision caches (and looks for) the ImageNet weights of this backbone."""
    url = check_backbone(name).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_classifier(name: str, weights: str | None, seed: int = 0) -> nn.Module:
    """The full torchvision classifier with the requested weights.

    Random weights are drawn from ``seed`` alone (not from the global RNG's current state), so
    ``evaluate`` and ``predict`` rebuild exactly the backbone a random-weights head was trained on.
    """
    spec = check_backbone(name)
    if weights is None or weights == "none" or weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return spec.builder(weights=None)
    if weights == "imagenet":
        try:
            return spec.builder(weights=spec.weights)
        except Exception as e:  # URLError, socket.gaierror, HTTPError, hash mismatch ...
            raise AssetMissingError(
                f"ImageNet weights for {name} are not in {weights_file(name)} and could not be "
                f"downloaded ({e.__class__.__name__}): run `python -m cifar_tl download` with "
                "internet, or use --profile smoke (random weights)"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"weights must be 'imagenet', None or a file; {weights!r} is none of those")
    model = spec.builder(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"{path}: not a state dict for {name} ({e.__class__.__name__})") from None
    return model


def build_backbone(name: str = "efficientnet_v2_s", weights: str | None = "imagenet",
                   seed: int = 0) -> nn.Module:
    """A frozen, eval-mode module mapping images [B,3,H,W] to pooled features [B, num_features].

    Like timm's ``num_classes=0``: the classifier is dropped, and the feature width is read
    from the classifier's first Linear layer (``backbone.num_features``), not typed in.
    ``seed`` only matters for random weights (``weights=None``).
    """
    m = _load_classifier(name, weights, seed)
    if isinstance(m, tvm.ResNet):
        width = m.fc.in_features
        m.fc = nn.Identity()
        body = m
    else:
        width = next(mod for mod in m.classifier.modules() if isinstance(mod, nn.Linear)).in_features
        pre = [m.classifier[0]] if isinstance(m, tvm.ConvNeXt) else []  # ConvNeXt's LayerNorm2d
        body = nn.Sequential(m.features, m.avgpool, *pre, nn.Flatten(start_dim=1))
    for p in body.parameters():
        p.requires_grad_(False)
    body.eval()
    body.num_features = width
    body.name = name
    return body


class Standardize(nn.Module):
    """z = (x - mean) / std per feature, with fixed statistics of the training features.

    Saved with the head (as buffers). Needed by the smoke profile: a random backbone's pooled
    features vary across images by ~1e-6 and an MLP cannot learn from them raw. With pretrained
    weights it is harmless and speeds Adam up. Identity until ``fit_stats`` is called.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit_stats(self, features: torch.Tensor) -> None:
        f = features.reshape(-1, features.shape[-1]).double()
        mean, std = f.mean(0), f.std(0)
        # A relative floor: dimensions that never vary must not blow up to 1/0.
        std = std.clamp_min(1e-4 * float(std.max()) + 1e-30)
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLPHead(nn.Sequential):
    """The tutorial's head, sized from the data: in_dim -> 256 -> 256 -> num_classes by default."""

    def __init__(self, in_dim: int, num_classes: int, hidden=(256, 256), standardize: bool = True):
        layers: list[nn.Module] = [Standardize(in_dim) if standardize else nn.Identity()]
        dims = [in_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        super().__init__(*layers)
        self.in_dim, self.num_classes, self.hidden = in_dim, num_classes, tuple(hidden)

    @property
    def standardizer(self) -> Standardize | None:
        return self[0] if isinstance(self[0], Standardize) else None


class TransferModel(nn.Module):
    """A frozen backbone and a trainable head. The backbone stays in eval mode whatever
    ``.train()`` is called on the model, so its BatchNorm statistics never move (the tutorial's
    bug 4) and stochastic depth stays off.
    """

    def __init__(self, backbone: nn.Module, head: MLPHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_config(cls, cfg, num_classes: int = 100) -> TransferModel:
        backbone = build_backbone(cfg.backbone, cfg.weights, cfg.seed)
        head = MLPHead(backbone.num_features, num_classes, cfg.hidden, cfg.standardize)
        return cls(backbone, head)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # not inference_mode: the head needs these in autograd
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(module: nn.Module) -> dict[str, int]:
    """{'trainable': n, 'frozen': m} parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def check_image_size(name: str, size: int) -> None:
    low = min_image_size(name)
    if size < low:
        raise ConfigError(f"image size {size} is below the {low} px that {name} accepts")

