"""Plots for the notebooks: each helper takes ax=None and returns the axes or figure.

Training curves, confusion matrices and run's report live in ``report`` and are re-exported here.
Importing it puts the installed Chinese (CJK) fonts into matplotlib's font fallback (``fonts``).
"""

from __future__ import annotations

import numpy as np
import torch

from . import fonts
from .data import IMAGENET_MEAN, IMAGENET_STD
from .report import LiveHistory, _axes, confusion_matrix, plot_confusion, plot_history, save_report  # noqa: F401

fonts.use_cjk_fonts()


def smoke_note(cfg):
    """A visible note for results of a run on generated data or a random backbone, else None.

    In a notebook, make it a cell's last expression: it shows as a highlighted box (Markdown).
    """
    said = [(en, zh) for en, zh, on in (
        ("synthetic images", "合成图像", cfg.source.startswith("synthetic")),
        ("a randomly initialised backbone", "随机初始化的主干网络", cfg.weights is None),
        ("a backbone pretrained on generated images", "在生成图像上预训练的主干网络", cfg.weights == "synthetic")) if on]
    if not said:
        return None
    from IPython.display import Markdown

    what, what_zh = " and ".join(en for en, _ in said), "和".join(zh for _, zh in said)
    return Markdown(f"> ⚠️ **Profile `{cfg.profile}`: {what}.** The numbers in this notebook "
                    "show that the code runs and learns; they say nothing about CIFAR-100 or about what "
                    "ImageNet features achieve. For real figures, set `profile = \"cpu\"` or `\"full\"` "
                    "in the parameters cell. No CIFAR-100 accuracy has been measured for this project yet; "
                    "the README's Results table lists what has been (smoke runs, speeds).\n>\n"
                    f"> ⚠️ **预设配置 `{cfg.profile}`：{what_zh}。** 本笔记本中的数字说明代码能运行、能学习；"
                    "它们不代表 CIFAR-100 上的结果，也不代表 ImageNet 特征能达到什么。要得到真实的数字，请在参数"
                    "单元格中设置 `profile = \"cpu\"` 或 `\"full\"`。本项目还没有测量过 CIFAR-100 上的准确率；"
                    "README 的 Results 表列出了已经测量过的内容（smoke 运行、速度）。")




def to_image(x, normalized: bool | None = None) -> np.ndarray:
    """Anything image-like -> HWC float array in [0, 1] for imshow.

    Accepts PIL images, uint8 or float tensors/arrays in CHW or HWC. A float image is
    un-normalised (ImageNet mean and std) when ``normalized``; ``None`` guesses from its values:
    outside [0, 1] means normalised (a bright normalised picture has values above 1, a dark one
    below 0). A normalised image whose values all fall inside [0, 1] needs ``normalized=True``.
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
    if normalized or (normalized is None and (x.min() < 0 or x.max() > 1)):
        x = x * np.array(IMAGENET_STD, dtype=np.float32) + np.array(IMAGENET_MEAN, dtype=np.float32)
    return x.clip(0, 1)


def show_image(x, ax=None, title: str | None = None):
    """Show one image (see ``to_image`` for what it accepts). Returns the axes."""
    ax = _axes(ax, (3, 3))
    ax.imshow(to_image(x))
    ax.set_axis_off()
    fonts.notice_if_missing(title)
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


# --------------------------------------------------------------------------- notebook helpers
def plot_class_distribution(targets, names=None, ax=None, title: str | None = None):
    """How many samples each class has, as bars. Returns the axes."""
    counts = np.bincount(np.asarray(targets), minlength=len(names) if names is not None else 0)
    fonts.notice_if_missing(list(names) if names is not None else None)
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
    from matplotlib.ticker import MaxNLocator

    ax = _axes(ax, (4, 2.8))
    for channel, color, name in zip(x.reshape(x.shape[0], -1), ("tab:red", "tab:green", "tab:blue"), "RGB"):
        ax.hist(channel.astype(np.float64), bins=bins, histtype="step", color=color, label=name)
    ax.legend(fontsize=7, title="channel", title_fontsize=7, frameon=False, loc="best")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # pixel counts are whole numbers
    ax.set_xlabel("pixel value")
    ax.set_ylabel("pixels")
    ax.set_title(title or f"mean {x.mean():.2f}, std {x.std():.2f}", fontsize=9)
    return ax


def show_feature_maps(fmap, n: int = 8, title: str | None = None, size: float = 1.3):
    """The first n channels of one feature map [C,H,W] (or [1,C,H,W]) on one shared colour scale,
    with a colour bar: a channel that is flat shows flat, not stretched into structure.

    Returns the figure.
    """
    import matplotlib.pyplot as plt

    fmap = fmap.detach().float().cpu() if isinstance(fmap, torch.Tensor) else torch.as_tensor(fmap)
    fmap = fmap[0] if fmap.ndim == 4 else fmap
    n = min(n, fmap.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(n * size + 0.8, size * 1.25), squeeze=False)
    lo, hi = float(fmap[:n].min()), float(fmap[:n].max())
    for c, ax in enumerate(axes[0]):
        im = ax.imshow(fmap[c].numpy(), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_axis_off()
        ax.set_title(f"ch {c}", fontsize=7)
    c, h, w = fmap.shape
    fig.suptitle(title or f"{c} channels of {h}x{w}", fontsize=9)
    fig.tight_layout()
    bar = fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    bar.set_label("activation (one scale)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return fig


def plot_embedding(points, labels, names=None, ax=None, title: str | None = None,
                   axis_labels=("component 1", "component 2")):
    """A 2-D scatter (e.g. a PCA of features), one colour and marker per label: tab20's paired
    shades get different markers, so 20 groups can be told apart. Returns the axes."""
    points = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    labels = np.asarray(labels)
    fonts.notice_if_missing(list(names) if names is not None else None)
    ax = _axes(ax, (7.5, 5))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for k in np.unique(labels):
        sel = labels == k
        ax.scatter(points[sel, 0], points[sel, 1], s=10, color=cmap(int(k) % 20), marker="os^D"[int(k) % 4],
                   alpha=0.8, label=names[k] if names is not None else str(k))
    if len(np.unique(labels)) <= 20:
        ax.legend(fontsize=8, markerscale=2, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  frameon=False, handletextpad=0.2)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title or "2-D projection", fontsize=9)
    return ax


def plot_topk(probs, indices, class_names, ax=None, title: str | None = None):
    """Horizontal bars of the top-k classes and their probabilities, best on top. Returns the axes."""
    probs = [float(p) for p in (probs.tolist() if hasattr(probs, "tolist") else probs)]
    indices = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    fonts.notice_if_missing([class_names[i] for i in indices])
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
    """Horizontal bars of measured seconds, one per named path, best compared whole to whole.

    A value may be a dict of its parts ({"cached path": {"extract": 3.0, "train the head": 0.5}}):
    the parts are stacked in one bar, so each bar is one whole way of doing the same work.
    Returns the axes.
    """
    from matplotlib.ticker import MaxNLocator

    fonts.notice_if_missing(list(seconds))
    ax = _axes(ax, (7, 0.7 + 0.55 * len(seconds)))
    names = list(seconds)
    parts = [v if isinstance(v, dict) else {"": v} for v in seconds.values()]
    totals = [sum(float(s) for s in p.values()) for p in parts]
    colours = iter(["tab:orange", "tab:blue", "tab:cyan", "tab:purple", "tab:olive", "tab:brown"])
    labelled = set()
    for y, p in zip(range(len(names))[::-1], parts):
        left = 0.0
        for part, s in p.items():
            colour = "tab:gray" if not part else next(colours)
            label = part if part and part not in labelled else None
            ax.barh(y, float(s), left=left, color=colour, label=label, edgecolor="white")
            labelled.add(part)
            left += float(s)
    ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
    for y, v in zip(range(len(names))[::-1], totals):
        ax.text(v, y, f" {v:.1f} s", va="center", fontsize=8)
    ax.set_xlim(0, max(totals + [1e-9]) * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    if labelled - {""}:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
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
        # Not "computed once": the tutorial recomputes them every epoch; only a cache (08) does not.
        (4.6, f"pooled features\n{width} numbers\n(the same every epoch)", "#eeeeee"),
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


def plot_lr_find(result: dict, ax=None):
    """The LR finder's smoothed loss against the learning rate (log scale), the suggestion marked."""
    ax = _axes(ax, (5, 3.5))
    ax.plot(result["lrs"], result["losses"], label="smoothed loss")
    ax.axvline(result["suggestion"], color="C3", ls="--", label=f"suggestion {result['suggestion']:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR finder (range test)")
    ax.legend()
    return ax


def plot_group_lrs(lrs: dict[str, list[float]], ax=None):
    """The learning rate of each parameter group over the steps ({group name: [lr per step]})."""
    ax = _axes(ax, (6, 3.5))
    for name, values in lrs.items():
        ax.plot(values, label=name)
    ax.set(yscale="log", xlabel="step", ylabel="learning rate", title="learning rate of each group")
    ax.legend(fontsize=7)
    return ax
