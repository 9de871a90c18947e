"""The loops: train_one_epoch, evaluate, fit and predict, for images and cached features alike."""

from __future__ import annotations

import copy
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


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
    top5: float
    loss: float
    n: int
    targets: torch.Tensor = field(repr=False)  # [N]
    preds: torch.Tensor = field(repr=False)  # [N] top-1 class
    confidence: torch.Tensor = field(repr=False)  # [N] softmax probability of the top-1 class
    top5_preds: torch.Tensor = field(repr=False)  # [N, 5]

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "top5": self.top5, "loss": self.loss, "n": self.n}


@torch.inference_mode()
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
    n = len(targets_t)
    return Evaluation(
        accuracy=(top5_t[:, 0] == targets_t).float().mean().item(),
        top5=(top5_t == targets_t[:, None]).any(1).float().mean().item(),
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
        loader.generator.manual_seed(seed * 100_003 + epoch)


def fit(
    model: nn.Module,
    train_loader,
    test_loader=None,
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

    Each history row has epoch, train loss/accuracy, test loss/accuracy/top5 (if test_loader)
    and seconds. ``on_epoch_end(row, model, optimizer)`` is called after each completed epoch
    (plots, checkpoints). On KeyboardInterrupt (a kernel interrupt, or SIGTERM via the CLI)
    the model is put back to the end of the last completed epoch and the history so far is
    returned: nothing of a finished epoch is lost.
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
            if test_loader is not None:
                ev = evaluate(model, test_loader, device, progress)
                row.update(test_loss=ev.loss, test_accuracy=ev.accuracy, test_top5=ev.top5)
            row["seconds"] = time.perf_counter() - t0
        except KeyboardInterrupt:
            trained.load_state_dict(saved[0])
            optimizer.load_state_dict(saved[1])
            print(f"interrupted during epoch {epoch + 1}: kept the model and history of "
                  f"{len(history)} completed epoch(s)")
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
