"""Interactive notebook UIs (ipywidgets); each falls back to a static matplotlib figure in batch runs.

A UI is interactive only in a live kernel with ipywidgets installed and a person at the other end.
Under nbval, papermill or ``jupyter nbconvert --execute`` nobody can move a slider, and a widget
without a frontend would leave no picture in the saved notebook, so each function then draws its
default state as a plain figure instead. ``CIFAR_TL_WIDGETS=static`` (or ``interactive``) forces
the choice; ``notebooks/conftest.py`` sets ``static`` for nbval.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from . import data, engine, viz
from .errors import ConfigError, ImageError
from .features import FeatureLoader, FeatureStore
from .kernel import _batch_runner, _decide, _figure, _saved_note, _show_in, in_colab, is_interactive  # noqa: F401
from .models import MLPHead, normalization


# --------------------------------------------------------------------------- dataset browser
def raw_image(ds, i: int):
    """Sample i as stored, before any transform: ``ds.raw_image(i)`` (the dataset contract)."""
    return ds.raw_image(i)


def _label(ds, i: int) -> str:
    fine = ds.classes[ds.targets[i]]
    coarse = getattr(ds, "coarse_targets", None)
    return f"{fine}\n[{ds.coarse_classes[coarse[i]]}]" if coarse is not None else fine


def draw_sample(ds, i: int, transform=None, fig=None):
    """Sample i: the stored image and, with a transform, what the model receives. Returns the figure."""
    fig = fig or _figure((6 if transform else 3, 3.3))
    fig.clear()
    axes = fig.subplots(1, 2 if transform else 1, squeeze=False)[0]
    img = raw_image(ds, i)
    viz.show_image(img, axes[0], f"#{i}: {_label(ds, i)}")
    if transform is not None:
        from PIL import Image

        pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
        x = transform(pil)
        viz.show_image(x, axes[1], f"after the transform: {tuple(x.shape)}")
    fig.tight_layout()
    return fig


def dataset_browser(ds, transform=None, n_static: int = 8, interactive: bool | None = None):
    """Browse a source by index, optionally filtered to one class.

    Interactive: an index slider, a class filter and the image (before/after ``transform``).
    Static: a figure of the first ``n_static`` samples with their fine and coarse labels.
    Returns the widget or the figure.
    """
    if isinstance(n_static, bool) or not isinstance(n_static, (int, np.integer)) or not 1 <= n_static <= 64:
        raise ConfigError(f"n_static must be a whole number of samples from 1 to 64, got {n_static!r}")
    if not _decide(interactive):
        n = min(int(n_static), len(ds))
        rows, cols = -(-n // 8), min(n, 8)  # rows of at most 8
        fig = _figure((1.7 * cols, 2.3 * rows))
        axes = fig.subplots(rows, cols, squeeze=False).flatten()
        for i, ax in enumerate(axes):
            if i < n:
                viz.show_image(raw_image(ds, i), ax, _label(ds, i))
            else:
                ax.axis("off")
        fig.suptitle(f"the first {n} of {len(ds)} samples (static view of the browser)", fontsize=9)
        fig.tight_layout()
        return fig
    _saved_note()
    import ipywidgets as W

    targets = np.asarray(ds.targets)
    choice = W.Dropdown(options=[("all classes", -1)] + [(c, k) for k, c in enumerate(ds.classes)],
                        value=-1, description="class · 类别")
    slider = W.IntSlider(0, 0, len(ds) - 1, description="index · 序号", continuous_update=False)
    out = W.Output()
    fig = _figure((6 if transform else 3, 3.3))

    def indices():
        return np.arange(len(ds)) if choice.value < 0 else np.flatnonzero(targets == choice.value)

    def redraw(*_):
        idx = indices()
        _show_in(out, draw_sample(ds, int(idx[min(slider.value, len(idx) - 1)]), transform, fig))

    def refilter(*_):
        slider.value, slider.max = 0, max(len(indices()) - 1, 0)
        redraw()

    choice.observe(refilter, "value")
    slider.observe(redraw, "value")
    redraw()
    return W.VBox([W.HBox([choice, slider]), out])


# --------------------------------------------------------------------------- your own image
def top_k(model, image, image_size: int, device="cpu", k: int = 5):
    """Top-k (probabilities, class indices) for one image: a path, PIL image or uint8 HWC array.

    Uses the evaluation transform (no flip), as ``python -m cifar_tl predict`` does.
    """
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = data.open_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    name = getattr(getattr(model, "backbone", None), "name", None)
    norm = normalization(name) if name else (data.IMAGENET_MEAN, data.IMAGENET_STD)
    x = data.eval_transform(image_size, *norm)(data.to_rgb(image))[None]
    probs, idx = engine.predict(model, x, device, k)
    return probs[0], idx[0]


def draw_prediction(image, probs, idx, class_names, title: str = "", fig=None):
    """The image beside its top-k bar chart. Returns the figure."""
    fig = fig or _figure((7.5, 2.8))
    fig.clear()
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    viz.show_image(image, a, title)
    viz.plot_topk(probs, idx, class_names, b, f"top-{len(idx)}")
    fig.tight_layout()
    return fig


def _upload_name(value) -> str:
    """The uploaded file's own name, from a FileUpload value (ipywidgets 8 tuple or 7 dict)."""
    item = value[0] if isinstance(value, (tuple, list)) else next(iter(value.values()))
    return item.get("name") or item.get("metadata", {}).get("name", "upload")


def _open_upload(value) -> tuple[str, object]:
    """(name, RGB PIL image) from a FileUpload value; errors name the user's file, not a temp file."""
    item = value[0] if isinstance(value, (tuple, list)) else next(iter(value.values()))
    name = _upload_name(value)
    suffix = Path(name).suffix or ".img"
    with tempfile.TemporaryDirectory() as tmp:  # open_image gives EXIF rotation and clear errors
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(bytes(item["content"]))
        try:
            return name, data.open_image(path)
        except ImageError as e:
            raise ImageError(str(e).replace(str(path), name)) from None


def _cannot_use(why) -> None:
    print(f"cannot use this file: {why}\n无法使用这个文件（原因见上一行），请换一张图片")


def upload_predictor(model, class_names, image_size: int, device="cpu", example=None,
                     interactive: bool | None = None):
    """Upload a photo, see the model's top-5 classes.

    Interactive: a FileUpload button and the chart for each upload (``example`` shown first).
    Static: the chart for ``example`` (a path, PIL image or uint8 array). Returns the widget or figure.
    """
    def chart(image, title, fig=None):
        probs, idx = top_k(model, image, image_size, device)
        shown = data.open_image(image) if isinstance(image, (str, Path)) else image
        shown = Image.fromarray(shown) if isinstance(shown, np.ndarray) else shown
        shown = T.Compose(data.eval_transform(image_size).transforms[:2])(shown)  # resized, centre-cropped: what the model sees
        return draw_prediction(shown, probs, idx, class_names, f"{title} (the centre crop the model sees)", fig)

    if in_colab() and interactive is not False:  # FileUpload drops files over ~1 MB there (ipywidgets #3452)
        from google.colab import files

        print("choose a photo with Colab's own upload (Cancel: the example) · 用 Colab 自带的上传选择一张照片（取消：用示例图）")
        name, content = next(iter((files.upload() or {None: None}).items()))
        if name is None:
            return chart(example, "example") if example is not None else None
        try:
            return chart(_open_upload(upload_bytes_value(name, content))[1], name)
        except ImageError as e:
            _cannot_use(e)
            return None
    if not _decide(interactive):
        if example is None:
            raise ValueError("a static upload_predictor needs an example image")
        return chart(example, "example (static view)")
    import ipywidgets as W

    _saved_note()
    upload = W.FileUpload(accept="image/*", multiple=False, description="your image · 你的图片",
                          tooltip="choose a photo: the model sees its centre crop · 选择一张照片：模型看到的是它的中心裁剪",
                          layout=W.Layout(width="max-content"))  # the default width cuts the bilingual label
    out, fig = W.Output(), _figure((7.5, 2.8))
    if example is not None:
        _show_in(out, chart(example, "example", fig))

    def on_upload(change):
        if not change["new"]:
            return
        try:
            name, image = _open_upload(change["new"])
            _show_in(out, chart(image, name, fig))
        except Exception as e:  # a bad file must not kill the UI: say what went wrong, alone
            from IPython.display import clear_output

            with out:
                clear_output()  # the previous image's chart would read as this file's result
                name = _upload_name(change["new"])
                message = str(e) if isinstance(e, ImageError) else f"{name}: {type(e).__name__}: {e}"
                _cannot_use(message)

    upload.observe(on_upload, "value")
    return W.VBox([upload, out])


# --------------------------------------------------------------------------- head explorer
def train_head(train, val, *, hidden: int = 256, depth: int = 2, lr: float = 1e-3, epochs: int = 10,
               batch_size: int = 32, seed: int = 0, device="cpu", num_classes: int | None = None,
               standardize: bool = False, on_epoch_end=None):
    """Train a fresh MLP head on cached features in seconds. Returns (head, history).

    ``train`` and ``val`` are (features [N,V,D], targets [N]) from ``features.cached_features``
    (``train`` may be a ``FeatureStore``: the views an epoch samples are then extracted when missing):
    the history's ``val_accuracy`` is what a choice of head is judged on (never the test split).
    ``standardize``: put a ``Standardize`` layer first (``Config.standardizes()``: a random backbone).
    """
    store = train if isinstance(train, FeatureStore) else None
    (tr_f, tr_y), (va_f, va_y) = (store.features, store.targets) if store else train, val
    torch.manual_seed(seed)
    num_classes = num_classes or int(max(tr_y.max(), va_y.max())) + 1
    head = MLPHead(tr_f.shape[-1], num_classes, hidden=(hidden,) * depth, standardize=standardize)
    if head.standardizer is not None:  # from the views extracted so far (a store holds NaN for the others)
        head.standardizer.fit_stats(tr_f[store.present] if store else tr_f)
    history = engine.fit(
        head, FeatureLoader(tr_f, tr_y, batch_size, train=True, seed=seed, device=device, store=store),
        FeatureLoader(va_f, va_y, 512, train=False, device=device),
        epochs=epochs, lr=lr, device=device, seed=seed, progress=False, on_epoch_end=on_epoch_end)
    return head, history


def _explorer_title(hidden, depth, lr, history) -> str:
    last = history[-1] if history else {}
    return (f"head {'-'.join(['D'] + [str(hidden)] * depth + ['C'])}, lr {lr:g}: "
            f"validation accuracy {last.get('val_accuracy', float('nan')):.1%}")


def head_explorer(train, val, *, hidden: int = 256, depth: int = 2, lr: float = 1e-3, epochs: int = 10,
                  batch_size: int = 32, device="cpu", standardize: bool = False,
                  interactive: bool | None = None):
    """Retrain the head on cached features with your own hidden size, depth, learning rate and epochs.

    Interactive: sliders, a Train button and a curve redrawn after every epoch.
    Static: one training with the given values and its curve. Returns the widget or the figure.
    """
    if not _decide(interactive):
        _, history = train_head(train, val, hidden=hidden, depth=depth, lr=lr, epochs=epochs,
                                batch_size=batch_size, device=device, standardize=standardize)
        live = viz.LiveHistory(epochs, _explorer_title(hidden, depth, lr, history) + " (static view)")
        live.history = history
        return live.figure()
    import ipywidgets as W

    w_hidden = W.IntSlider(hidden, 16, 1024, 16, description="hidden")
    w_depth = W.IntSlider(depth, 0, 4, description="depth")
    w_lr = W.FloatLogSlider(lr, base=10, min=-5, max=-1, description="lr", readout_format=".0e")
    w_epochs = W.IntSlider(epochs, 1, 50, description="epochs")
    button, out = W.Button(description="Train", button_style="primary"), W.Output()
    shown: dict = {}  # the curve on screen, to mark stale when a control changes

    def stale(*_):
        live = shown.get("live")
        if live is not None and not live.title.startswith("stale"):
            live.title = "stale · 已过时: the controls changed, press Train · 控件已改动，请按 Train\nwas: " + live.title
            _show_in(out, live.figure())

    def run(*_):
        button.disabled = True
        try:
            live = shown["live"] = viz.LiveHistory(w_epochs.value)

            def redraw(row, *_):
                live.history.append(row)
                live.title = _explorer_title(w_hidden.value, w_depth.value, w_lr.value, live.history)
                _show_in(out, live.figure())

            train_head(train, val, hidden=w_hidden.value, depth=w_depth.value, lr=w_lr.value,
                       epochs=w_epochs.value, batch_size=batch_size, device=device, standardize=standardize,
                       on_epoch_end=redraw)
        finally:
            button.disabled = False

    button.on_click(run)
    for w in (w_hidden, w_depth, w_lr, w_epochs):
        w.observe(stale, "value")
    _saved_note()
    with out:
        print("choose the head's shape and press Train · 选好分类头的结构，然后按 Train")
    return W.VBox([W.HBox([w_hidden, w_depth]), W.HBox([w_lr, w_epochs]), button, out])


def upload_bytes_value(name: str, content: bytes) -> tuple[dict, ...]:
    """A FileUpload-shaped value (ipywidgets 8) for tests and for feeding a file programmatically."""
    return ({"name": name, "type": "", "size": len(content), "content": memoryview(content),
             "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


__all__ = ["dataset_browser", "draw_prediction", "draw_sample", "head_explorer", "in_colab", "is_interactive",
           "raw_image", "top_k", "train_head", "upload_bytes_value", "upload_predictor"]
