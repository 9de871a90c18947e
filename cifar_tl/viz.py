"""Plots for the notebooks and run's report: each helper takes ax=None and returns the axes or figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import IMAGENET_MEAN, IMAGENET_STD


def _axes(ax, figsize=(5, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def to_image(x) -> np.ndarray:
    """Anything image-like -> HWC float array in [0, 1] for imshow.

    Accepts PIL images, uint8 or float tensors/arrays in CHW or HWC; a float tensor with
    negative values is taken to be ImageNet-normalised and is un-normalised.
    """
    if hasattr(x, "convert"):  # PIL
        return np.asarray(x.convert("RGB"), dtype=np.float32) / 255
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.ndim == 3 and x.shape[0] in (1, 3):
            x = x.permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255
    x = x.astype(np.float32)
    if x.min() < 0:
        x = x * np.array(IMAGENET_STD, dtype=np.float32) + np.array(IMAGENET_MEAN, dtype=np.float32)
    return x.clip(0, 1)


def show_image(x, ax=None, title: str | None = None):
    """Show one image (see ``to_image`` for what it accepts). Returns the axes."""
    ax = _axes(ax, (3, 3))
    ax.imshow(to_image(x))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def show_images(images, titles=None, ncols: int = 8, size: float = 1.6):
    """A grid of images with optional titles. Returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(images[i], ax, titles[i] if titles else None)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_history(history: list[dict], ax=None):
    """Loss and accuracy per epoch, train and (when present) test. Returns the axes (loss)."""
    ax = _axes(ax, (6, 3.5))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    if history and "test_loss" in history[0]:
        ax.plot(epochs, [r["test_loss"] for r in history], "s-", label="test loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    acc = ax.twinx()
    acc.plot(epochs, [r["train_accuracy"] for r in history], "o--", color="tab:green", label="train acc")
    if history and "test_accuracy" in history[0]:
        acc.plot(epochs, [r["test_accuracy"] for r in history], "s--", color="tab:red", label="test acc")
    acc.set_ylabel("accuracy")
    acc.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="center right")
    ax.set_title("training history")
    return ax


def confusion_matrix(targets, preds, num_classes: int, mapping=None) -> np.ndarray:
    """Counts [true, predicted]; ``mapping`` (e.g. fine_to_coarse) merges classes first."""
    t, p = np.asarray(targets), np.asarray(preds)
    if mapping is not None:
        m = np.asarray(mapping)
        t, p = m[t], m[p]
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def plot_confusion(cm: np.ndarray, labels=None, ax=None, normalize: bool = True):
    """A confusion matrix as an image, rows = true class. Returns the axes."""
    ax = _axes(ax, (7, 6))
    m = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    if labels is not None and len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


def save_report(out: Path, history: list[dict], ev, train_ds) -> list[Path]:
    """run's plots as PNG: history.png and confusion.png (superclasses when the source has them)."""
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves notebooks alone

    written = []
    fig = Figure(figsize=(6, 3.5))
    plot_history(history, fig.add_subplot())
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=110)
    written.append(out / "history.png")

    coarse = getattr(train_ds, "coarse_classes", None)
    if coarse is not None:
        cm = confusion_matrix(ev.targets, ev.preds, len(coarse), train_ds.fine_to_coarse)
        labels = coarse
    else:
        cm, labels = confusion_matrix(ev.targets, ev.preds, len(train_ds.classes)), train_ds.classes
    fig = Figure(figsize=(8, 7))
    ax = plot_confusion(cm, labels, fig.add_subplot())
    ax.set_title(f"confusion over {len(labels)} {'superclasses' if coarse else 'classes'}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    written.append(out / "confusion.png")
    return written
