"""Stages of a feature extractor: its top-level blocks, input to output, that fine-tuning can
unfreeze from the top (EfficientNet's blocks of ``features``, ResNet's ``layer1``..``layer4``, ViT's
encoder layers), found from the module tree alone."""

from __future__ import annotations

from torch import nn

# A child holding at least this share of its parent's parameters is a trunk, not a stage: its
# own blocks are the stages (EfficientNet's `features`, ViT's `encoder.layers`).
_TRUNK_SHARE = 0.9
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _size(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())


def _listlike(m: nn.Module) -> bool:
    return type(m) in (nn.Sequential, nn.ModuleList)  # plain lists, not blocks built on them


def _blocks(module: nn.Module, prefix: str = "", used: set | None = None) -> list[tuple[str, nn.Module]]:
    """The children of ``module`` in order, with lists of blocks opened up: a child holding most of
    the parameters (EfficientNet's ``features``, ViT's ``encoder``), a plain list of single layers
    (VGG's ``features``), or the only plain list of four or more blocks (MobileNetV3's
    ``features``; ResNet's several ``layerN`` stay whole). Modules the forward pass never calls
    (Inception's auxiliary classifiers) are left out when ``used`` names those it calls."""
    total = max(_size(module), 1)
    kids = list(module.named_children())
    lists = [c for _, c in kids if _listlike(c) and sum(1 for g in c.children() if list(g.children())) >= 4]
    out = []
    for name, child in kids:
        full = f"{prefix}{name}"
        if used is not None and not any(n == full or n.startswith(full + ".") for n in used):
            continue
        trunk = len(list(child.children())) > 1 and _size(child) >= _TRUNK_SHARE * total
        flat = (_listlike(child) and len(child) >= 4
                and any(_size(g) and not list(g.children()) for g in child.children()))
        if trunk or flat or (not prefix and lists == [child]):
            out += _blocks(child, full + ".", used)
        else:
            out.append((full, child))
    return out


def _norm_only(m: nn.Module) -> bool:
    leaves = [x for x in m.modules() if not list(x.children()) and _size(x)]
    return bool(leaves) and all(isinstance(x, _NORMS) for x in leaves)


def find_stages(model: nn.Module, used: set | None = None) -> tuple[list[str], list[nn.Module]]:
    """The top-level blocks of an extractor, input to output: the children of its trunk (the
    child holding most parameters, opened up repeatedly: EfficientNet's ``features``, ViT's
    ``encoder.layers``, Swin's ``features``), other children with parameters as they are
    (ResNet's ``layer1``..``layer4``). Consecutive single layers (a stem's conv and norm, VGG's
    convolutions) form one stage up to the next pooling layer; a stage of norm layers only (a
    final LayerNorm) joins the stage before it. Parameters held directly by a module (ViT's class
    token and position embedding) belong to no stage: they train when the whole backbone does.
    """
    groups: list[list[tuple[str, nn.Module]]] = []
    run: list[tuple[str, nn.Module]] = []
    for name, m in _blocks(model, "", used):
        leaf = not list(m.children())
        if leaf and isinstance(m, _POOLS) or not leaf:
            _close(groups, run)
            run = []
        if not _size(m):
            continue
        if leaf:
            run.append((name, m))
        else:
            _close(groups, [(name, m)])
    _close(groups, run)
    names = ["+".join(n for n, _ in g) for g in groups]
    return names, [g[0][1] if len(g) == 1 else nn.ModuleList(m for _, m in g) for g in groups]


def _close(groups: list, group: list) -> None:
    """Append a finished group of (name, module), or join it to the last one if it is norms only."""
    if not group:
        return
    if groups and all(_norm_only(m) for _, m in group):
        groups[-1].extend(group)
    else:
        groups.append(group)


def output_module(stage: nn.Module) -> nn.Module:
    """The module whose output is the stage's output, for a forward hook: the stage itself, or the
    last layer of a stage grouped from single layers (ResNet's ``conv1+bn1``): that group is a
    ``ModuleList`` the forward pass never calls, so a hook on it would never fire."""
    return stage[-1] if type(stage) is nn.ModuleList else stage
