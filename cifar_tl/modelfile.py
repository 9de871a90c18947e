"""model.pt, the checkpoint of a fine-tuned model: the head checkpoint and the trained backbone tensors."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .config import Config
from .errors import CheckpointError, one_line
from .models import TransferModel, build_backbone
from .storage import atomic_save

MODEL_FORMAT = "cifar_tl.model"
MODEL_FORMAT_VERSION = 1


def _trained_names(backbone: nn.Module, stages) -> set[str]:
    """Names of the tensors fine-tuning changes when ``stages`` train: their parameters and buffers
    (BatchNorm statistics), and every other parameter when all stages train (ViT's class token)."""
    ids = {id(t) for s in stages for t in chain(s.parameters(), s.buffers())}
    if len(stages) == len(backbone.stages):
        ids |= {id(p) for p in backbone.parameters()}
    return {k for k, v in backbone.state_dict(keep_vars=True).items() if id(v) in ids}


def trained_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors that fine-tuning changes: the unfrozen stages' parameters and
    buffers (BatchNorm statistics), and any other trainable parameter."""
    names = _trained_names(backbone, getattr(backbone, "unfrozen", []))
    names |= {k for k, p in backbone.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if k in names}


def save_model(path, model: TransferModel, *, config, class_names, backbone_fingerprint: str, metrics=None,
               **head_meta) -> Path:
    """model.pt: the head checkpoint (as head.pt, with its metadata and checksum) and the trained
    backbone tensors, checksummed, loadable with ``weights_only=True``. ``backbone_fingerprint``:
    of the backbone before fine-tuning (``checkpoint.backbone_fingerprint``), which loading
    rebuilds; ``head_meta`` as for ``checkpoint.save_head`` (coarse_classes, fine_to_coarse)."""
    path = Path(path)
    head = checkpoint.read_checkpoint(path, checkpoint.head_blob(  # checked as head.pt would be
        model.head, config=config, class_names=class_names, metrics=metrics,
        backbone_fingerprint=backbone_fingerprint, **head_meta))
    bb = model.backbone
    blob = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "state_dict": trained_state(bb),
            "unfrozen": [n for n, s in zip(bb.stage_names, bb.stages) if any(s is u for u in getattr(bb, "unfrozen", []))],
            "bn_train": bool(getattr(bb, "bn_train", False)), "head": head}
    return atomic_save(checkpoint.with_checksum(blob), path)


def read_model(path, blob: dict | None = None) -> dict:
    """model.pt's contents with every field checked, as ``checkpoint.read_checkpoint`` checks a
    head.pt (its head is checked by it): what evaluate and predict both use. CheckpointError
    naming the file for anything damaged, of the wrong type, or crafted."""
    blob = checkpoint.load_file(path, "model checkpoint") if blob is None else blob
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a cifar_tl model checkpoint (no '{MODEL_FORMAT}' format tag)")
    if blob.get("format_version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path}: model checkpoint format {one_line(repr(blob.get('format_version')), 30)} "
                              f"is not {MODEL_FORMAT_VERSION}; use the cifar_tl that wrote it")
    unfrozen = blob.get("unfrozen")
    for name, ok, expected in (
            ("head", isinstance(blob.get("head"), dict), "a head checkpoint"),
            ("unfrozen", isinstance(unfrozen, list) and all(isinstance(s, str) for s in unfrozen)
             and len(set(unfrozen)) == len(unfrozen), "a list of stage names"),
            ("bn_train", isinstance(blob.get("bn_train"), bool), "true or false")):
        if not ok:
            raise CheckpointError(f"{path}: a cifar_tl model checkpoint with a damaged '{name}' field ({expected} "
                                  f"expected, got {one_line(repr(blob.get(name)), 60)}); save it again")
    checkpoint.check_tensors(blob.get("state_dict"), path)
    head = checkpoint.read_checkpoint(path, blob["head"])
    if not isinstance(head.get("backbone_fingerprint"), str):  # save_model always stores it
        raise CheckpointError(f"{path}: damaged: no fingerprint of the backbone it was fine-tuned from; "
                              "save it again")
    if not checkpoint.checksum_ok(blob):
        raise CheckpointError(f"{path}: damaged: its weights or metadata do not match their checksum")
    return blob


def load_model_checkpoint(path, device="cpu", blob: dict | None = None) -> tuple[TransferModel, dict]:
    """Rebuild a fine-tuned model from model.pt (``blob``: its contents, if already loaded): the
    original backbone (its fingerprint checked), the trained tensors put back, the head.
    Exactly the tensors fine-tuning its stages changes, of their shapes: nothing missing, nothing
    extra. Returns (model in eval mode, the head's metadata)."""
    blob = read_model(path, blob)
    meta = blob["head"]
    name = checkpoint.known_backbone(meta["backbone"], path)
    checkpoint.check_weights_file(meta, path)
    backbone = build_backbone(name, meta["weights"], Config.from_dict(meta["config"]).seed)
    if checkpoint.backbone_fingerprint(backbone) != meta["backbone_fingerprint"]:
        raise CheckpointError(f"{path}: the {name} backbone rebuilt here is not the one "
                              "it was fine-tuned from (other weights or torch version)")
    _check_trained_tensors(path, backbone, blob)
    backbone.load_state_dict(blob["state_dict"], strict=False)  # exactly the trained ones: checked
    head, meta = checkpoint.load_head(path, blob=meta)
    meta.update(unfrozen=blob["unfrozen"], bn_train=blob["bn_train"])
    return TransferModel(backbone, head).to(device).eval(), meta


def _check_trained_tensors(path, backbone: nn.Module, blob: dict) -> None:
    """The stored tensors must be exactly those of the named top stages, with their shapes."""
    names, k = list(blob["unfrozen"]), len(blob["unfrozen"])
    top = list(backbone.stage_names[len(backbone.stage_names) - k:]) if k else []
    if names != top:
        raise CheckpointError(f"{path}: damaged: it names fine-tuned stages {names} where {backbone.name}'s "
                              f"top {k} are {top}; save it again")
    expected = backbone.state_dict()
    wanted = _trained_names(backbone, list(backbone.stages[len(backbone.stages) - k:]) if k else [])
    stored = blob["state_dict"]
    missing, extra = sorted(wanted - set(stored)), sorted(set(stored) - wanted)
    wrong = [n for n in sorted(wanted & set(stored)) if tuple(stored[n].shape) != tuple(expected[n].shape)]
    if missing or extra or wrong:
        what = "; ".join(f"{label}: {', '.join(ns[:3])}{' ...' if len(ns) > 3 else ''}" for label, ns in (
            ("missing", missing), (f"not in {backbone.name}'s stages {names}", extra), ("of another shape", wrong)) if ns)
        raise CheckpointError(f"{path}: its backbone tensors do not fit {backbone.name} fine-tuned at {names} "
                              f"({what}); save it again")
