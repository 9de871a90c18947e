"""Training curves, confusion matrices and the run's report (history.png, confusion.png).

Each plot helper takes ax=None and returns the axes; ``viz`` re-exports everything here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import fonts


def _axes(ax, figsize=(5, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def plot_history(history: list[dict], ax=None):
    """Loss and accuracy per epoch, train and (when present) validation. Returns the axes (loss)."""
    ax = _axes(ax, (6, 3.5))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    if history and "val_loss" in history[0]:
        ax.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    acc = ax.twinx()
    acc.plot(epochs, [r["train_accuracy"] for r in history], "o--", color="tab:green", label="train acc")
    if history and "val_accuracy" in history[0]:
        acc.plot(epochs, [r["val_accuracy"] for r in history], "s--", color="tab:red", label="validation acc")
    acc.set_ylabel("accuracy")
    acc.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    # Below the axes: inside, the legend sat on the curves wherever they went.
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=len(lines), frameon=False)
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
    fonts.notice_if_missing(list(labels) if labels is not None else None)
    m = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    if labels is not None and len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("share of the true class's images" if normalize else "images")
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
