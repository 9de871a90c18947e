"""Models: the MLP head (with its feature standardisation) and TransferModel; backbones come from
torchvision's registry (``backbones.py``, re-exported here)."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import (  # noqa: F401  (the public names of models)
    BACKBONES,
    DEFAULT_BACKBONE,
    backbone_info,
    build_backbone,
    check_backbone,
    check_image_size,
    default_image_size,
    feature_width,
    find_stages,
    format_backbones_table,
    imagenet_weights,
    list_backbones,
    min_image_size,
    normalization,
    stage_count,
    weights_file,
)

_BATCH_NORMS = nn.modules.batchnorm._BatchNorm


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
        # > 0 while the backbone fine-tunes: in train mode each batch moves the statistics by this
        # fraction (as BatchNorm's running statistics), so they follow features that change.
        self.momentum = 0.0

    @torch.no_grad()
    def fit_stats(self, features: torch.Tensor) -> None:
        f = features.reshape(-1, features.shape[-1]).double()
        mean, std = f.mean(0), f.std(0)
        # A relative floor: dimensions that never vary must not blow up to 1/0.
        std = std.clamp_min(1e-4 * float(std.max()) + 1e-30)
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        f = x.detach().reshape(-1, x.shape[-1]).double()
        if len(f) < 2:
            return
        m = self.momentum
        self.mean.mul_(1 - m).add_((m * f.mean(0)).float())
        std = f.std(0).clamp_min(1e-4 * float(f.std(0).max()) + 1e-30)
        self.std.mul_(1 - m).add_((m * std).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.momentum > 0:
            self._track(x)
        return (x - self.mean) / self.std


class MLPHead(nn.Sequential):
    """The tutorial's head, sized from the data: in_dim -> 256 -> 256 -> num_classes by default.

    Without standardisation it is exactly the tutorial's ``fc``: Linear, ReLU, Linear, ReLU,
    Linear, with the same state_dict keys (0, 2, 4), so the tutorial's saved weights load into it.
    With ``standardize`` a ``Standardize`` layer comes first (for a random backbone).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden=(256, 256), standardize: bool = False):
        layers: list[nn.Module] = [Standardize(in_dim)] if standardize else []
        dims = [in_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        super().__init__(*layers)
        self.in_dim, self.num_classes, self.hidden = in_dim, num_classes, tuple(hidden)

    @property
    def standardizer(self) -> Standardize | None:
        return self[0] if isinstance(self[0], Standardize) else None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also loads a bare head saved by earlier versions of the package, where an ``Identity``
        stood first and the layers were numbered from 1 (keys 1, 3, 5 instead of 0, 2, 4)."""
        keys = set(state_dict)
        if self.standardizer is None and "0.weight" not in keys and "1.weight" in keys:
            state_dict = {f"{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class TransferModel(nn.Module):
    """A frozen backbone and a trainable head. The backbone stays in eval mode whatever
    ``.train()`` is called on the model, so its BatchNorm statistics never move (the tutorial's
    bug 4) and stochastic depth stays off.

    Fine-tuning (``finetune.unfreeze``) lists the unfrozen stages in ``backbone.unfrozen``. They
    train in eval mode too, as the Keras guide runs the base model with ``training=False``: their
    BatchNorm statistics stay ImageNet's, and dropout and stochastic depth stay off (on a random
    smoke backbone they swamped features that differ across images by ~1e-6). With
    ``backbone.bn_train`` their BatchNorm layers go to train mode with the head.
    """

    def __init__(self, backbone: nn.Module, head: MLPHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # How the frozen backbone runs (``engines.make_runner``: precision, OpenVINO); None: torch
        # fp32 here. Used only while no stage is unfrozen.
        self.runner = None

    @classmethod
    def from_config(cls, cfg, num_classes: int = 100) -> TransferModel:
        backbone = build_backbone(cfg.backbone, cfg.weights, cfg.seed, cfg.progress)
        head = MLPHead(backbone.num_features, num_classes, cfg.hidden, cfg.standardizes())
        return cls(backbone, head)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        self.backbone.eval()
        if mode and getattr(self.backbone, "bn_train", False):
            for stage in getattr(self.backbone, "unfrozen", ()):
                for m in stage.modules():
                    if isinstance(m, _BATCH_NORMS):
                        m.train()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        frozen = not getattr(self.backbone, "unfrozen", ())
        if self.runner is not None and frozen:
            return self.runner(x).clone()  # a normal tensor: the runner's are inference tensors
        # no_grad (not inference_mode: the head needs these in autograd) unless stages train.
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(getattr(self.backbone, "unfrozen", ()))):
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(module: nn.Module) -> dict[str, int]:
    """{'trainable': n, 'frozen': m} parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}
