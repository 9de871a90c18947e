"""The loops (train_one_epoch, evaluate, fit, predict) for images and cached features."""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # text bars: a saved notebook shows "Error displaying widget" for tqdm.auto's

from .config import epoch_seed
from .errors import TrainingDiverged
from .threads import head_threads, per_model  # noqa: F401  (head_threads: engine's public name too)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (the loaders take their own seeded generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (students' code may use the legacy global RNG)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam over the trainable parameters only, as in the tutorial."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def _bar(loader, desc: str, progress: bool):
    return tqdm(loader, desc=desc, disable=not progress, leave=False, file=sys.stdout)


@per_model
def train_one_epoch(model: nn.Module, loader, optimizer, loss_fn, device, progress: bool = True,
                    desc: str = "train") -> dict:
    """One pass over loader. Returns the sample-weighted mean loss and accuracy."""
    model.train()  # a TransferModel keeps its backbone in eval mode
    total_loss, correct, n = 0.0, 0, 0
    bar = _bar(loader, desc, progress)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = loss_fn(out, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} after {n} sample(s) of this epoch: the learning rate "
                "is probably too high (try a 10x lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = len(y)
        total_loss += loss.item() * b
        correct += (out.argmax(1) == y).sum().item()
        n += b
        if progress:
            bar.set_postfix(loss=f"{total_loss / n:.3f}", acc=f"{correct / n:.3f}", refresh=False)
    return {"loss": total_loss / max(n, 1), "accuracy": correct / max(n, 1), "n": n}


@dataclass
class Evaluation:
    """The result of evaluating a whole split once, with per-sample predictions for plots."""

    accuracy: float
    top5: float | None  # None with 5 classes or fewer
    loss: float
    n: int
    targets: torch.Tensor = field(repr=False)  # [N]
    preds: torch.Tensor = field(repr=False)  # [N] top-1 class
    confidence: torch.Tensor = field(repr=False)  # [N] softmax probability of the top-1 class
    top5_preds: torch.Tensor = field(repr=False)  # [N, 5]


@torch.inference_mode()
@per_model
def evaluate(model: nn.Module, loader, device, progress: bool = True, desc: str = "evaluate") -> Evaluation:
    """Every sample of loader exactly once (no sampling, no flips), top-1 and top-5, weighted by sample."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, targets, top5s, confs = 0.0, [], [], []
    for x, y in _bar(loader, desc, progress):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x).float()
        total_loss += loss_fn(out, y).item()
        probs = out.softmax(1)
        conf, top = probs.topk(min(5, out.shape[1]), dim=1)
        targets.append(y.cpu())
        top5s.append(top.cpu())
        confs.append(conf[:, 0].cpu())
    targets_t, top5_t = torch.cat(targets), torch.cat(top5s)
    num_classes = out.shape[1]
    n = len(targets_t)
    return Evaluation(
        accuracy=(top5_t[:, 0] == targets_t).float().mean().item(),
        # With 5 classes or fewer every sample is in its top 5: no figure rather than a false 1.0.
        top5=(top5_t == targets_t[:, None]).any(1).float().mean().item() if num_classes > 5 else None,
        loss=total_loss / n,
        n=n,
        targets=targets_t,
        preds=top5_t[:, 0],
        confidence=torch.cat(confs),
        top5_preds=top5_t,
    )


def _set_epoch(loader, seed: int, epoch: int) -> None:
    """Make an epoch's shuffle depend only on (seed, epoch), so resuming repeats it exactly."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch))


@per_model
def fit(
    model: nn.Module,
    train_loader,
    val_loader=None,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    device="cpu",
    optimizer: torch.optim.Optimizer | None = None,
    history: list[dict] | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch_end=None,
) -> list[dict]:
    """Train for ``epochs`` epochs (continuing after ``len(history)`` of them) and return the history.

    Each history row has epoch, train loss/accuracy, validation loss/accuracy/top5 (``val_*``, if
    ``val_loader``) and seconds. Pass the validation split, never the test split: whatever is
    chosen by looking at these rows (epochs, rates, designs) would otherwise be tuned on test. ``on_epoch_end(row, model, optimizer)`` is called after each completed epoch
    (plots, checkpoints). On KeyboardInterrupt (a kernel interrupt, or SIGTERM via the CLI)
    the model is put back to the end of the last completed epoch and the history so far is
    returned: nothing of a finished epoch is lost. A NaN or infinite loss puts the model back the
    same way, then raises ``TrainingDiverged``.
    """
    model.to(device)
    optimizer = optimizer or make_optimizer(model, lr)
    history = list(history or [])
    loss_fn = nn.CrossEntropyLoss()
    trained = getattr(model, "head", model)  # the frozen backbone needs no snapshot
    saved = copy.deepcopy(trained.state_dict()), copy.deepcopy(optimizer.state_dict())
    for epoch in range(len(history), epochs):
        try:
            t0 = time.perf_counter()
            _set_epoch(train_loader, seed, epoch)
            tr = train_one_epoch(model, train_loader, optimizer, loss_fn, device, progress,
                                 desc=f"epoch {epoch + 1}/{epochs}")
            row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"]}
            if val_loader is not None:
                ev = evaluate(model, val_loader, device, progress)
                row.update(val_loss=ev.loss, val_accuracy=ev.accuracy, val_top5=ev.top5)
            row["seconds"] = time.perf_counter() - t0
        except (KeyboardInterrupt, TrainingDiverged) as e:
            trained.load_state_dict(saved[0])
            optimizer.load_state_dict(saved[1])
            if isinstance(e, TrainingDiverged):
                raise TrainingDiverged(f"epoch {epoch + 1}: {e}; kept the {len(history)} completed "
                                       "epoch(s)") from None
            log.warning("interrupted during epoch %d: kept the model and history of %d completed "
                        "epoch(s)", epoch + 1, len(history))
            break
        history.append(row)
        saved = copy.deepcopy(trained.state_dict()), copy.deepcopy(optimizer.state_dict())
        if on_epoch_end is not None:
            on_epoch_end(row, model, optimizer)
    return history


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device="cpu", k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (probabilities, class indices) for a batch of preprocessed images [B,3,H,W]."""
    model.eval().to(device)
    probs = model(x.to(device)).float().softmax(1)
    return [t.cpu() for t in probs.topk(min(k, probs.shape[1]), dim=1)]


# --------------------------------------------------------------------------- learning-rate finder
@per_model
def lr_find(model: nn.Module, loader, device="cpu", *, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, beta: float = 0.98, diverge: float = 4.0, optimizer_fn=None,
            loss_fn=None) -> dict:
    """Smith's learning-rate range test (fastai's ``lr_find``): train ``steps`` batches with the
    rate growing exponentially from ``start_lr`` to ``end_lr``, record the loss smoothed by an
    exponential moving average (``beta``, bias-corrected), stop once it exceeds ``diverge`` times
    its minimum, and put the model back as it was.

    Returns {"lrs", "losses" (smoothed), "raw", "min_loss_lr", "suggestion"}; the suggestion is
    fastai's "valley" (``valley``): a rate two thirds of the way down the longest stretch where the
    loss keeps falling. The older rule, the lowest loss's rate divided by 10, was too bold on this
    project's heads (a tenth of that trained better on smoke data; benchmarks/README.md).
    ``optimizer_fn(params, lr)`` defaults to Adam, as the head's.
    """
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    saved = copy.deepcopy(model.state_dict())
    opt = (optimizer_fn or (lambda ps, lr: torch.optim.Adam(ps, lr=lr)))(params, start_lr)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    mult = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, raw, avg, best = [], [], [], 0.0, float("inf")
    batches = _endless(loader)
    model.train()
    with torch.random.fork_rng(devices=[]):
        for i in range(steps):
            lr = start_lr * mult**i
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = next(batches)
            loss = loss_fn(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (i + 1))
            if not np.isfinite(smooth):
                break
            lrs.append(lr), losses.append(smooth), raw.append(value)
            best = min(best, smooth)
            if smooth > diverge * best:
                break
    model.load_state_dict(saved)
    if not lrs:
        raise TrainingDiverged(f"the loss was not finite at the first learning rate ({start_lr:g}): lower start_lr")
    min_lr = lrs[int(np.argmin(losses))]
    return {"lrs": lrs, "losses": losses, "raw": raw, "min_loss_lr": min_lr, "suggestion": lrs[valley(losses)]}


def valley(losses: list[float]) -> int:
    """fastai's ``valley`` suggestion: the index two thirds of the way down the longest
    decreasing run of ``losses`` (the longest subsequence in which each loss is below the one
    before; O(n^2) for the ~100 points of a range test)."""
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return min(n - 1, max(0, start + int(third) + int(third / 2)))


def _endless(loader):
    """Batches of ``loader`` again and again (a new epoch's order each pass)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find: the loader yields no batches")
        epoch += 1
