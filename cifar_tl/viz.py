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
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * (1.05 + 0.1 * lines)),
                             squeeze=False)
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


# --------------------------------------------------------------------------- notebook helpers
def plot_class_distribution(targets, names=None, ax=None, title: str | None = None):
    """How many samples each class has, as bars. Returns the axes."""
    counts = np.bincount(np.asarray(targets), minlength=len(names) if names is not None else 0)
    ax = _axes(ax, (8, 2.8))
    ax.bar(range(len(counts)), counts, width=0.9, color="tab:blue")
    if names is not None and len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_xlabel("class")
    ax.set_ylabel("samples")
    ax.set_title(title or f"{counts.sum()} samples, {counts.min()}-{counts.max()} per class", fontsize=9)
    return ax


def plot_pixel_histogram(x, ax=None, title: str | None = None, bins: int = 50):
    """Histogram of pixel values per channel (R, G, B), as they are: no un-normalising. Returns the axes."""
    if hasattr(x, "convert"):  # PIL: 0..255
        x = np.asarray(x.convert("RGB")).transpose(2, 0, 1)
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 3 and x.shape[0] != 3:  # HWC -> CHW
        x = x.transpose(2, 0, 1)
    ax = _axes(ax, (4, 2.8))
    for channel, color in zip(x.reshape(x.shape[0], -1), ("tab:red", "tab:green", "tab:blue")):
        ax.hist(channel.astype(np.float64), bins=bins, histtype="step", color=color)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("count")
    ax.set_title(title or f"mean {x.mean():.2f}, std {x.std():.2f}", fontsize=9)
    return ax


def show_feature_maps(fmap, n: int = 8, title: str | None = None, size: float = 1.3):
    """The first n channels of one feature map [C,H,W] (or [1,C,H,W]), each scaled to its range.

    Returns the figure.
    """
    import matplotlib.pyplot as plt

    fmap = fmap.detach().float().cpu() if isinstance(fmap, torch.Tensor) else torch.as_tensor(fmap)
    fmap = fmap[0] if fmap.ndim == 4 else fmap
    n = min(n, fmap.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(n * size, size * 1.25), squeeze=False)
    for c, ax in enumerate(axes[0]):
        ax.imshow(fmap[c].numpy(), cmap="viridis")
        ax.set_axis_off()
        ax.set_title(f"ch {c}", fontsize=7)
    c, h, w = fmap.shape
    fig.suptitle(title or f"{c} channels of {h}x{w}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_embedding(points, labels, names=None, ax=None, title: str | None = None):
    """A 2-D scatter (e.g. a PCA of features), one colour per label (up to 20 distinct). Returns the axes."""
    points = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    labels = np.asarray(labels)
    ax = _axes(ax, (6, 5))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for k in np.unique(labels):
        sel = labels == k
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=cmap(int(k) % 20),
                   label=names[k] if names is not None else str(k))
    if len(np.unique(labels)) <= 20:
        ax.legend(fontsize=6, markerscale=1.5, ncol=2, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title or "2-D projection", fontsize=9)
    return ax


def plot_topk(probs, indices, class_names, ax=None, title: str | None = None):
    """Horizontal bars of the top-k classes and their probabilities, best on top. Returns the axes."""
    probs = [float(p) for p in (probs.tolist() if hasattr(probs, "tolist") else probs)]
    indices = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    ax = _axes(ax, (4, 2.5))
    ax.barh(range(len(probs))[::-1], probs, color="tab:blue")
    ax.set_yticks(range(len(probs))[::-1], [class_names[i] for i in indices], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_predictions(images, preds, targets, confidence, class_names, ncols: int = 6, size: float = 1.9):
    """A gallery titled 'predicted (confidence) / true', green when right, red when wrong. Returns the figure."""
    titles = [f"{class_names[int(p)]} ({float(c):.0%})\ntrue: {class_names[int(t)]}"
              for p, t, c in zip(preds, targets, confidence)]
    fig = show_images(images, titles, ncols=ncols, size=size)
    for ax, p, t in zip(fig.axes, preds, targets):
        ax.title.set_color("tab:green" if int(p) == int(t) else "tab:red")
    return fig


def plot_timings(seconds: dict, ax=None, title: str | None = None):
    """Horizontal bars of measured seconds, one per named stage or path. Returns the axes."""
    ax = _axes(ax, (6, 0.5 + 0.45 * len(seconds)))
    names, values = list(seconds), [float(v) for v in seconds.values()]
    ax.barh(range(len(names))[::-1], values, color="tab:orange")
    ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
    for y, v in zip(range(len(names))[::-1], values):
        ax.text(v, y, f" {v:.1f} s", va="center", fontsize=8)
    ax.set_xlim(0, max(values + [1e-9]) * 1.25)
    ax.set_xlabel("seconds")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def draw_transfer_learning(ax=None, image_size: int = 300, width: int = 1280, hidden=(256, 256),
                           num_classes: int = 100):
    """The idea of transfer learning as a diagram: frozen pretrained backbone, new trainable head.

    Returns the axes.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax = _axes(ax, (10, 3.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.2)
    ax.set_axis_off()
    boxes = [
        (0.1, f"image\n3x{image_size}x{image_size}", "#eeeeee"),
        (2.1, "pretrained backbone\n(ImageNet, 1.2 M images)\nFROZEN: requires_grad=False\n+ eval mode", "#bcd7f0"),
        (4.6, f"pooled features\n{width} numbers\n(computed once)", "#eeeeee"),
        (6.6, "new head (MLP)\n" + "-".join(str(d) for d in (width, *hidden, num_classes)) + "\nTRAINED", "#f7c9a8"),
        (8.7, f"{num_classes} class\nscores", "#eeeeee"),
    ]
    widths = [1.5, 2.1, 1.6, 1.7, 1.2]
    for (x, text, color), w in zip(boxes, widths):
        ax.add_patch(FancyBboxPatch((x, 1.0), w, 1.3, boxstyle="round,pad=0.05", fc=color, ec="#555555"))
        ax.text(x + w / 2, 1.65, text, ha="center", va="center", fontsize=8)
    for (x, _, _), w, (nx, _, _) in zip(boxes[:-1], widths[:-1], boxes[1:]):
        ax.add_patch(FancyArrowPatch((x + w + 0.05, 1.65), (nx - 0.05, 1.65), arrowstyle="-|>",
                                     mutation_scale=12, color="#333333"))
    ax.text(3.15, 0.55, "reused: knows edges, textures, shapes", ha="center", fontsize=8, style="italic")
    ax.text(7.45, 0.55, "learns your classes", ha="center", fontsize=8, style="italic")
    ax.text(5, 2.85, "transfer learning: reuse a trained feature extractor, train only a small head",
            ha="center", fontsize=9)
    return ax


class LiveHistory:
    """An ``on_epoch_end`` callback for ``engine.fit`` that redraws loss and accuracy after each epoch.

    In a notebook the figure is replaced in place (``clear_output(wait=True)``), so a finished cell
    holds exactly one figure, under nbval and papermill too; elsewhere it prints one line per epoch.
    ``history`` holds the rows seen so far.
    """

    def __init__(self, epochs: int | None = None, title: str = "training history", figsize=(6, 3.5)):
        self.epochs, self.title, self.figsize = epochs, title, figsize
        self.history: list[dict] = []

    def figure(self):
        """The current plot as a pyplot-free Figure (shown once, never twice by the inline backend)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize)
        ax = plot_history(self.history, fig.add_subplot())
        if self.epochs:
            ax.set_xlim(0.5, self.epochs + 0.5)
        ax.set_title(self.title, fontsize=9)
        fig.tight_layout()
        return fig

    def __call__(self, row: dict, model=None, optimizer=None) -> None:
        self.history.append(row)
        try:
            from IPython import get_ipython
            from IPython.display import clear_output, display
        except ImportError:  # pragma: no cover - IPython comes with every Jupyter install
            get_ipython = lambda: None  # noqa: E731
        if get_ipython() is None:
            print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            return
        clear_output(wait=True)
        display(self.figure())
