"""Backbones from torchvision's own registry: any classification model as a feature extractor.

The extractor is the torchvision model with its final classification layer replaced by
``nn.Identity`` (timm's ``num_classes=0``), found generically as the last ``nn.Linear`` (or 1x1
convolution, SqueezeNet) that outputs the weights' categories. Its width is read from that layer.
Everything else (input sizes, mean/std, parameters, GFLOPs) comes from the weights' metadata.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from .digests import weights_digest
from .errors import AssetMissingError, CheckpointError, ConfigError, UnknownBackbone
from .stages import find_stages

DEFAULT_BACKBONE = "efficientnet_v2_s"
# The short list the notebooks and README recommend; any name of list_backbones() works.
# "weights" pins the ImageNet weights that "imagenet" meant before the registry (so features,
# cached files and offline weight files stay the same); "cut" names the module replaced by
# Identity when it is not the last classification Linear: MobileNetV3's 960 pooled channels,
# before its classifier's hidden 1280 layer, as the package has always used.
BACKBONES: dict[str, dict] = {
    "efficientnet_v2_s": {"note": "the tutorial's backbone"},
    "efficientnet_b0": {"note": "small and quick"},
    "mobilenet_v3_large": {"note": "for laptops", "weights": "IMAGENET1K_V1", "cut": "classifier"},
    "resnet18": {"note": "the classic, quick on a CPU"},
    "resnet50": {"note": "the classic", "weights": "IMAGENET1K_V1"},
    "convnext_tiny": {"note": "a modern CNN"},
    "regnet_y_400mf": {"note": "tiny and accurate"},
    "vit_b_16": {"note": "a transformer; 224 px only"},
    "swin_t": {"note": "a windowed transformer"},
}


# --------------------------------------------------------------------------- names and metadata
@lru_cache(maxsize=1)
def list_backbones() -> list[str]:
    """Every classification model torchvision knows (``list_models(module=torchvision.models)``)."""
    return sorted(tvm.list_models(module=tvm))


def check_backbone(name: str) -> str:
    """``name`` if torchvision knows it; else UnknownBackbone naming the closest names."""
    if isinstance(name, str) and name in list_backbones():
        return name
    close = difflib.get_close_matches(str(name), list_backbones(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownBackbone(f"unknown backbone {name!r}; {hint}the default is {DEFAULT_BACKBONE}; "
                          "`python -m cifar_tl backbones` lists all")


def imagenet_weights(name: str) -> tvm.WeightsEnum:
    """The ImageNet weights "imagenet" stands for: the pinned ones of BACKBONES, else DEFAULT."""
    enum = tvm.get_model_weights(check_backbone(name))
    pinned = BACKBONES.get(name, {}).get("weights")
    return enum[pinned] if pinned else enum.DEFAULT


def weights_file(name: str) -> Path:
    """Where torchvision caches (and looks for) the ImageNet weights of this backbone."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(imagenet_weights(name).url)


def min_image_size(name: str) -> int:
    """The smallest input the backbone accepts, from torchvision's weights metadata."""
    return max(imagenet_weights(name).meta["min_size"])


def default_image_size(name: str) -> int:
    """The size the ImageNet weights were evaluated at (their transforms' crop)."""
    return int(imagenet_weights(name).transforms().crop_size[0])


def normalization(name: str, weights=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the weights' own transforms. Random weights use the ImageNet weights'
    values, which is what the architecture's recipe expects."""
    t = imagenet_weights(name).transforms()
    return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)


@contextlib.contextmanager
def _on_meta():
    """Build models with parameters and buffers on the meta device: no memory, no initialisation
    cost, and shapes still propagate through a forward pass (some builders compute with tensors,
    so ``torch.device("meta")`` as a context would fail there)."""
    reg_p, reg_b = nn.Module.register_parameter, nn.Module.register_buffer

    def param(self, name, p):
        reg_p(self, name, None if p is None else nn.Parameter(p.to("meta"), p.requires_grad))

    def buffer(self, name, t, persistent=True):
        reg_b(self, name, None if t is None else t.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = param, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = reg_p, reg_b


def _get_model(name: str, **kwargs) -> nn.Module:
    """``get_model``, with an architecture that takes an ``image_size`` (ViT) built for the size of
    its ImageNet weights, as torchvision builds it for them (ViT-H's are 518 px, its default 224)."""
    size = max(imagenet_weights(name).meta["min_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet's and Inception's init notice
        try:
            return tvm.get_model(name, image_size=size, **kwargs)
        except TypeError:  # raised before any initialisation: the random state is untouched
            return tvm.get_model(name, **kwargs)


@lru_cache(maxsize=8)
def _meta_extractor(name: str) -> nn.Module:
    """The extractor's architecture on the meta device (no weights, no memory)."""
    with _on_meta():
        model = _get_model(name, weights=None)
    return _strip_classifier(model, name)[0].eval()


@lru_cache(maxsize=32)
def stage_count(name: str) -> int:
    """How many stages ``--unfreeze`` can choose from (counted on the meta device: no weights)."""
    model = _meta_extractor(check_backbone(name))
    return len(find_stages(model, _called_modules(name))[1])


def feature_width(name: str) -> int:
    """The pooled feature width of the backbone, read from its classifier (no weights built)."""
    return _meta_extractor(check_backbone(name)).num_features


def check_image_size(name: str, size: int) -> None:
    """ConfigError (one line) if the backbone cannot run at ``size`` px: below the weights'
    minimum, or another size than a fixed-size architecture's (ViT, MaxViT). The second check runs
    the architecture on the meta device, so it knows exactly what the model accepts."""
    low = min_image_size(name)
    if size < low:
        raise ConfigError(f"image size {size} is below the {low} px that {name} accepts")
    if not _runs_at(name, size):
        fits = [s for s in (default_image_size(name), low) if _runs_at(name, s)]
        use = f"use --image-size {fits[0]}" if fits else "choose another backbone"
        raise ConfigError(f"{name} does not run at {size} px (its input size is fixed by the "
                          f"architecture): {use}")


@lru_cache(maxsize=64)
def _runs_at(name: str, size: int) -> bool:
    try:
        with torch.no_grad():
            _meta_extractor(name)(torch.empty(1, 3, size, size, device="meta"))
    except (RuntimeError, AssertionError, ValueError, IndexError):
        return False
    return True


def backbone_info(name: str) -> dict:
    """Width, input sizes, parameters and GFLOPs (per image at the default size) from the weights'
    metadata, and the weights' own mean/std."""
    w = imagenet_weights(name)
    mean, std = normalization(name)
    return {"name": name, "width": feature_width(name), "default_size": default_image_size(name),
            "min_size": min_image_size(name), "params": int(w.meta["num_params"]),
            "gflops": float(w.meta.get("_ops", float("nan"))), "mean": mean, "std": std,
            "weights": f"{type(w).__name__}.{w.name}", "recommended": name in BACKBONES}


def format_backbones_table(names=None) -> str:
    """A text table of the backbones for ``python -m cifar_tl backbones`` (recommended marked *)."""
    rows = [backbone_info(n) for n in (names or list_backbones())]
    lines = [f"  {'name':22s} {'width':>6s} {'size':>5s} {'min':>4s} {'params':>8s} {'GFLOPs':>7s}"]
    for r in rows:
        mark = "*" if r["recommended"] else " "
        lines.append(f"{mark} {r['name']:22s} {r['width']:6d} {r['default_size']:5d} {r['min_size']:4d} "
                     f"{r['params'] / 1e6:7.1f}M {r['gflops']:7.2f}")
    lines.append(f"* recommended; the default is {DEFAULT_BACKBONE}. size: the weights' input size; "
                 "min: the smallest accepted (--image-size)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the extractor
def _classifier_path(model: nn.Module, num_classes: int) -> str:
    """The module name of the final classification layer: the last Linear with ``num_classes``
    outputs, else the last 1x1 convolution with them (SqueezeNet classifies with a convolution)."""
    mods = list(model.named_modules())
    for kind, out in ((nn.Linear, "out_features"), (nn.Conv2d, "out_channels")):
        hits = [n for n, m in mods if isinstance(m, kind) and getattr(m, out) == num_classes]
        if hits:
            return hits[-1]
    raise ConfigError(f"{type(model).__name__} has no final layer with {num_classes} outputs to remove")


def _input_width(module: nn.Module) -> int:
    first = next(m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    return first.in_features if isinstance(first, nn.Linear) else first.in_channels


def _strip_classifier(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Replace the classification layer (or BACKBONES' ``cut``) by Identity; set ``num_features``."""
    categories = imagenet_weights(name).meta.get("categories") or range(1000)
    path = BACKBONES.get(name, {}).get("cut") or _classifier_path(model, len(categories))
    parent_name, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_name)
    model.num_features = _input_width(parent.get_submodule(child))
    setattr(parent, child, nn.Identity())
    return model, path


def _build_classifier(name: str, weights, seed: int, progress: bool = True) -> nn.Module:
    """The full torchvision classifier with the requested weights. Random weights are drawn from
    ``seed`` alone (not the global RNG's state), so evaluate and predict rebuild exactly the
    backbone a random-weights head was trained on."""
    check_backbone(name)
    if weights is None or weights in ("none", "random"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _get_model(name, weights=None)
    if weights == "synthetic":  # pretrained by the package on generated images (pretrain.py)
        from . import pretrain

        def extractor(pretrain_seed: int) -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(pretrain_seed)
                model, _ = _strip_classifier(_get_model(name, weights=None), name)
            model.name = name
            return model

        state = pretrain.synthetic_state(name, extractor, progress=progress)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _get_model(name, weights=None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        path = _classifier_path(model, len(imagenet_weights(name).meta.get("categories") or range(1000)))
        if unexpected or any(not k.startswith(BACKBONES.get(name, {}).get("cut") or path) for k in missing):
            raise CheckpointError(f"the synthetic weights of {name} do not fit its architecture: delete "
                                  f"{pretrain.checkpoints_dir()}/{pretrain.file_stem(name)}-*.pt to rebuild them")
        return model
    if weights == "imagenet":
        return _imagenet_classifier(name)
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"weights must be 'imagenet', None or a file; {weights!r} is none of those")
    model = _get_model(name, weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"{path}: not a state dict for {name} ({e.__class__.__name__})") from None
    return model


def _imagenet_classifier(name: str) -> nn.Module:
    """The classifier with its ImageNet weights, from torch's hub folder (downloaded if missing). A
    file already there is checked against the sha256 prefix in its name (torchvision checks it
    only when downloading): another state dict put in its place, or a cut copy, is refused."""
    path = weights_file(name)
    if path.is_file():
        check_weights_hash(path)
    try:
        return tvm.get_model(name, weights=imagenet_weights(name))
    except Exception as e:  # URLError, socket.gaierror, HTTPError, hash mismatch ...
        if path.is_file():
            raise CheckpointError(f"{path}: the ImageNet weights for {name} are damaged ({e.__class__.__name__}): "
                                  "delete the file and run `python -m cifar_tl download` with internet") from None
        raise AssetMissingError(
            f"ImageNet weights for {name} are not in {path} and could not be "
            f"downloaded ({e.__class__.__name__}): run `python -m cifar_tl download` with "
            "internet, or use --profile smoke (random weights)") from None


def check_weights_hash(path: Path) -> None:
    """CheckpointError if the file's sha256 does not start with the hex digits its name carries
    (``name-<sha256 prefix>.pth``, ``torch.hub.check_hash``'s rule). Each file is hashed once per
    process while its size and modification time stay the same (``digests.weights_digest``)."""
    found = re.search(r"-([a-f0-9]+)\.", path.name)  # torch.hub.HASH_REGEX
    if found is None:
        return
    digest = weights_digest(path)
    if not digest.startswith(found.group(1)):
        raise CheckpointError(f"{path}: damaged or replaced: its sha256 starts {digest[:len(found.group(1))]}, "
                              f"its name says {found.group(1)}: delete the file and run "
                              "`python -m cifar_tl download` with internet")


def build_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = "imagenet",
                   seed: int = 0, progress: bool = True) -> nn.Module:
    """A frozen, eval-mode module mapping images [B,3,H,W] to pooled features [B, num_features].

    Like timm's ``num_classes=0``: the torchvision model with its classification layer replaced
    by Identity. Attributes: ``num_features`` (read from that layer), ``name``, ``stages`` (the
    top-level blocks, input to output, for fine-tuning) and ``stage_names``. ``seed`` only
    matters for random weights; ``progress=False`` (``--quiet``) hides the bar of a first
    ``--weights synthetic`` build.
    """
    model, _ = _strip_classifier(_build_classifier(name, weights, seed, progress), name)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    model.name = name
    model.stage_names, model.stages = find_stages(model, _called_modules(name))
    return model


# --------------------------------------------------------------------------- stages
@lru_cache(maxsize=32)
def _called_modules(name: str) -> frozenset:
    """Names of the modules the extractor's forward pass calls (on the meta device)."""
    model = _meta_extractor(name)
    size = next((s for s in (default_image_size(name), min_image_size(name)) if _runs_at(name, s)), None)
    if size is None:
        return frozenset(n for n, _ in model.named_modules())
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda _m, _i, n=n: called.add(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return frozenset(called)
