"""Fine-tuning: unfreeze the top stages of the backbone, discriminative learning rates, warm-up
and cosine decay, BatchNorm kept in eval mode (model.pt, the checkpoint it writes: ``modelfile``).

The recipe of fastai's ``fine_tune`` and the Keras transfer-learning guide: the head is trained
first on cached features (``engine.fit``), then the top K stages train with it, each stage down at
``lr_decay`` times the rate of the one above, in eval mode: BatchNorm statistics frozen unless
``bn_train`` (a batch of 8 gives noisy statistics that would overwrite ImageNet's), no dropout or
stochastic depth (``models.TransferModel.train``).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from itertools import chain

import torch
from torch import nn
from tqdm import tqdm  # text bars: a saved notebook shows "Error displaying widget" for tqdm.auto's

from . import engine, threads
from .config import epoch_seed, parse_unfreeze
from .engines import resolve_precision
from .errors import ConfigError, TrainingDiverged
from .modelfile import (  # noqa: F401  (model.pt: finetune's public names too)
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    load_model_checkpoint,
    read_model,
    save_model,
    trained_state,
)
from .models import TransferModel, normalization
from .preprocess import ImageBatches, channels_last_pays  # noqa: F401  (ImageBatches: finetune's public name too)

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1  # of all steps, linear from lr/warmup_steps up to lr (then cosine to 0)
# The head's standardisation follows the features as the backbone trains (models.Standardize):
# a random backbone's features differ across images by ~1e-6 and any update of its stages moves
# them by far more, which fixed statistics would blow up (smoke fine-tuning fell to chance).
STANDARDIZE_MOMENTUM = 0.1


# --------------------------------------------------------------------------- unfreezing
def resolve_unfreeze(value, backbone: nn.Module) -> int:
    """The number of top stages ``value`` (0..K or "all") means for this backbone; ConfigError
    for anything else, naming the backbone's stage count."""
    n = len(backbone.stages)
    k = parse_unfreeze(value)
    if k == "all":
        return n
    if k > n:
        raise ConfigError(f"unfreeze {k}: {backbone.name} has {n} stages; use 0..{n} or all")
    return k


def unfreeze(backbone: nn.Module, k, bn_train: bool = False) -> list[nn.Module]:
    """Make the top ``k`` stages (or "all") trainable; everything else stays frozen. Returns the
    unfrozen stages, also kept in ``backbone.unfrozen`` for ``TransferModel.train``."""
    k = resolve_unfreeze(k, backbone)
    for p in backbone.parameters():
        p.requires_grad_(False)
    stages = list(backbone.stages[len(backbone.stages) - k:]) if k else []
    trainable = backbone.parameters() if k == len(backbone.stages) else chain(*(s.parameters() for s in stages))
    for p in trainable:  # "all" includes parameters outside any stage (ViT's class token)
        p.requires_grad_(True)
    backbone.unfrozen, backbone.bn_train = stages, bool(bn_train)
    return stages


def param_groups(model: TransferModel, lr: float, lr_decay: float, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups: the head at ``lr``, the top unfrozen stage at ``lr * lr_decay``, the
    next at ``lr * lr_decay**2`` ... Biases and norm weights (1-d) get no weight decay, as usual.
    Each group carries its ``name`` and ``base_lr`` (the schedule scales it)."""
    groups, seen = [], set()

    def add(name, params, group_lr):
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        for suffix, ps, wd in (("", [p for p in params if p.ndim > 1], weight_decay),
                               (" (no decay)", [p for p in params if p.ndim <= 1], 0.0)):
            if ps:
                groups.append({"params": ps, "lr": group_lr, "base_lr": group_lr,
                               "weight_decay": wd, "name": name + suffix})

    add("head", model.head.parameters(), lr)
    bb = model.backbone
    names = dict(zip(map(id, bb.stages), bb.stage_names))
    unfrozen = list(getattr(bb, "unfrozen", []))
    for depth, stage in enumerate(reversed(unfrozen), start=1):
        add(names.get(id(stage), f"stage -{depth}"), stage.parameters(), lr * lr_decay**depth)
    add("backbone (outside stages)", bb.parameters(), lr * lr_decay ** (len(unfrozen) + 1))
    return groups


def make_optimizer(model: TransferModel, lr: float, lr_decay: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, lr_decay, weight_decay), lr=lr)


def make_schedule(total_steps: int, warmup_steps: int | None = None):
    """factor(step) for step 0..total_steps-1: linear warm-up to 1, then cosine decay towards 0."""
    warm = max(1, round(WARMUP_FRACTION * total_steps)) if warmup_steps is None else max(0, warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


def group_lrs(optimizer: torch.optim.Optimizer, total_steps: int, schedule=None) -> dict[str, list[float]]:
    """{group name: its learning rate at every step} under ``schedule`` (default ``make_schedule``)."""
    schedule = schedule or make_schedule(total_steps)
    return {g.get("name", str(i)): [g.get("base_lr", g["lr"]) * schedule(s) for s in range(total_steps)]
            for i, g in enumerate(optimizer.param_groups)}


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g.get("base_lr", g["lr"]) * factor


def train_dtype(precision: str, device) -> torch.dtype | None:
    """The autocast dtype of fine-tuning: ``precision`` resolved on CUDA (bf16, or fp16 with a
    gradient scaler); None (fp32) elsewhere, where training in reduced precision was not measured."""
    if torch.device(device).type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision, device)[0])


# --------------------------------------------------------------------------- batches
def largest_batch(model: TransferModel, image_size: int, device, start: int = 8, limit: int = 1024) -> int:
    """On CUDA, the largest power-of-two batch (up to ``limit``) whose training step fits in memory,
    halved once for headroom; elsewhere ``start``."""
    device = torch.device(device)
    if device.type != "cuda":
        return start
    model.to(device).train()
    kept = [t.clone() for t in model.buffers()]  # BatchNorm (bn_train) and Standardize would move
    dtype, best, b = train_dtype("auto", device), start, start
    while b <= limit:
        try:
            x = torch.randn(b, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=dtype):
                model(x).float().sum().backward()
            best, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    with torch.no_grad():
        for t, k in zip(model.buffers(), kept):
            t.copy_(k)
    return max(start, best // 2)


# --------------------------------------------------------------------------- training
@threads.per_model
def fine_tune(model: TransferModel, train_ds, val_ds, cfg, device, *, epochs: int, history=None,
              optimizer=None, batch_size: int | None = None, on_epoch_end=None,
              warmup_steps: int | None = None) -> list[dict]:
    """Train the unfrozen stages and the head for ``epochs`` epochs (continuing after
    ``len(history)`` of them) on images preprocessed on the device. Returns the history.

    Call ``unfreeze`` first. AdamW (``cfg.weight_decay``) with ``param_groups``; warm-up then cosine
    decay per step over all epochs (``warmup_steps``: None for ``WARMUP_FRACTION`` of the steps, 0
    for none, as notebook 09 compares); autocast (bf16, or fp16 with a gradient scaler) and
    channels_last on CUDA. The head's standardisation follows the moving features
    (``STANDARDIZE_MOMENTUM``). Rows: epoch, train loss/accuracy, validation loss/accuracy/top5
    (``val_*``, when ``val_ds`` is not None), seconds,
    images_per_second, lr (the peak rate of each group this epoch). Every epoch's batches and flips
    draw from (seed, epoch) alone: a resumed run repeats an uninterrupted one.
    ``on_epoch_end(row, model, optimizer)`` as in ``engine.fit``. A loss, validation loss or weight that
    is not finite puts the model back to the end of the last completed epoch (nothing NaN reaches
    ``on_epoch_end``), then raises ``TrainingDiverged``.
    """
    device = torch.device(device)
    model.to(device)
    if channels_last_pays(device):
        model.to(memory_format=torch.channels_last)
    bs = batch_size or largest_batch(model, cfg.image_size, device, cfg.batch_size)
    if bs < 2 and getattr(model.backbone, "bn_train", False):
        raise ConfigError("--bn-train needs --batch-size 2 or more: BatchNorm cannot take statistics of "
                          "one image")
    mean, std = normalization(cfg.backbone, cfg.weights)
    train = ImageBatches(train_ds, cfg.image_size, bs, device, True, cfg.seed, mean, std)
    val = None if val_ds is None else ImageBatches(val_ds, cfg.image_size, 64, device, False, mean=mean, std=std)
    optimizer = optimizer or make_optimizer(model, cfg.lr, cfg.lr_decay, cfg.weight_decay)
    schedule = make_schedule(epochs * len(train), warmup_steps)
    dtype = train_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    log.info("fine-tuning %d of %d stages of %s (%s trainable parameters), batch %d, on %s",
             len(getattr(model.backbone, "unfrozen", [])), len(model.backbone.stages), model.backbone.name,
             f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}", bs, device)
    history, loss_fn = list(history or []), nn.CrossEntropyLoss()
    if model.head.standardizer is not None:
        model.head.standardizer.momentum = STANDARDIZE_MOMENTUM
    for epoch in range(len(history), epochs):
        saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        t0, step0 = time.perf_counter(), epoch * len(train)
        train.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # anything random a model adds
        model.train()
        total, correct, n, peak = 0.0, 0, 0, {}
        bar = tqdm(train, desc=f"fine-tune {epoch + 1}/{epochs}", disable=not cfg.progress, leave=False, file=sys.stdout)
        for i, (x, y) in enumerate(bar):
            set_lr(optimizer, schedule(step0 + i))
            peak = {g["name"]: max(g["lr"], peak.get(g["name"], 0.0)) for g in optimizer.param_groups}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(x)
                loss = loss_fn(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            value = loss.item()
            if not math.isfinite(value):
                _diverged(model, optimizer, saved, cfg, epoch, f"the loss became {value} after {n} image(s)")
            total, correct, n = total + value * len(y), correct + (out.argmax(1) == y).sum().item(), n + len(y)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "phase": "fine-tune", "train_loss": total / max(n, 1),
               "train_accuracy": correct / max(n, 1)}
        if not all(p.isfinite().all() for p in model.parameters() if p.requires_grad):
            _diverged(model, optimizer, saved, cfg, epoch, "the weights became infinite or NaN")
        if val is not None:
            ev = evaluate(model, val, device, dtype)
            if not math.isfinite(ev.loss):
                _diverged(model, optimizer, saved, cfg, epoch, f"the validation loss became {ev.loss}")
            row.update(val_loss=ev.loss, val_accuracy=ev.accuracy, val_top5=ev.top5)
        row.update(train_seconds=seconds, images_per_second=n / max(seconds, 1e-9),
                   seconds=time.perf_counter() - t0, batch_size=bs, lr=peak)
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(row, model, optimizer)
    return history


def _diverged(model, optimizer, saved, cfg, epoch: int, what: str):
    """Put the model and optimizer back to the end of the last completed epoch; TrainingDiverged
    naming the settings that cause it."""
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    wd = f" or --weight-decay {cfg.weight_decay:g}" if cfg.weight_decay else ""
    raise TrainingDiverged(
        f"fine-tuning epoch {epoch + 1}: {what}: the learning rate (--lr {cfg.lr:g}, --lr-decay {cfg.lr_decay:g})"
        f"{wd} is too high: try a 10x lower --lr; kept the {epoch} completed fine-tuning epoch(s) and the "
        "head trained before them")


def evaluate(model: TransferModel, batches, device, dtype=None) -> engine.Evaluation:
    """``engine.evaluate`` over image batches, under autocast when ``dtype`` is given."""
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        return engine.evaluate(model, batches, device, progress=False)


def evaluate_dataset(model: TransferModel, test_ds, cfg, device, batch_size: int = 64) -> engine.Evaluation:
    """A fine-tuned model on a whole test split exactly as ``fine_tune`` evaluates it (same
    memory format, precision and batches), so ``evaluate --checkpoint model.pt`` reproduces it."""
    device = torch.device(device)
    model.to(device)
    if channels_last_pays(device):
        model.to(memory_format=torch.channels_last)
    mean, std = normalization(cfg.backbone, cfg.weights)
    return evaluate(model, ImageBatches(test_ds, cfg.image_size, batch_size, device, False, mean=mean, std=std),
                    device, train_dtype(cfg.precision, device))
