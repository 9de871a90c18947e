"""The notebook helpers: plots return what they promise, widgets fall back to figures and survive no frontend."""

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from cifar_tl import models, viz, widgets  # noqa: E402
from cifar_tl.synthetic import SyntheticCIFAR  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt  # imported here: a test run of one file may not have loaded it

    plt.close("all")


@pytest.fixture(scope="module")
def ds():
    return SyntheticCIFAR(train=False, n_per_class=1)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    backbone = models.build_backbone("resnet18", weights=None)
    return models.TransferModel(backbone, models.MLPHead(backbone.num_features, 100, hidden=(8,)))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_class_distribution_has_one_bar_per_class():
    ax = viz.plot_class_distribution([0, 1, 1, 2, 2, 2], ["a", "b", "c"])
    assert [p.get_height() for p in ax.patches] == [1, 2, 3]


def test_pixel_histogram_does_not_unnormalise():
    x = torch.full((3, 4, 4), -1.5)
    ax = viz.plot_pixel_histogram(x)
    assert "mean -1.50" in ax.get_title()
    assert viz.plot_pixel_histogram(Image.new("RGB", (4, 4), (255, 0, 0))) is not None


def test_feature_maps_shows_n_channels_of_a_batched_map():
    fmap = torch.randn(1, 10, 5, 5)
    fmap[0, 1] *= 100  # one loud channel: the others must look quiet beside it, not stretched to its range
    fig = viz.show_feature_maps(fmap, n=4)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4 and "10 channels of 5x5" in fig._suptitle.get_text()
    assert len({im.get_clim() for im in images}) == 1, "one shared colour scale"
    assert images[0].get_clim() == (float(fmap[0, :4].min()), float(fmap[0, :4].max()))
    assert any("activation" in ax.get_ylabel() for ax in fig.axes), "a labelled colour bar"


def test_embedding_colours_each_label_and_names_it():
    ax = viz.plot_embedding(torch.randn(30, 2), [0] * 10 + [1] * 10 + [2] * 10, ["x", "y", "z"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y", "z"]


def test_topk_puts_the_best_class_on_top():
    ax = viz.plot_topk(torch.tensor([0.7, 0.2, 0.1]), torch.tensor([2, 0, 1]), ["a", "b", "c"])
    labels = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
    assert labels[max(labels)] == "c" and labels[min(labels)] == "b"


def test_predictions_are_green_when_right_and_red_when_wrong():
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    fig = viz.show_predictions(images, [1, 0], [1, 1], [0.9, 0.6], ["zero", "one"], ncols=2)
    colours = [ax.title.get_color() for ax in fig.axes[:2]]
    assert colours == ["tab:green", "tab:red"]
    assert "one (90%)" in fig.axes[0].get_title() and "true: one" in fig.axes[1].get_title()


def test_timings_label_every_bar():
    ax = viz.plot_timings({"slow": 10.0, "fast": 1.0})
    assert len(ax.patches) == 2 and {t.get_text().strip() for t in ax.texts} == {"10.0 s", "1.0 s"}


def test_transfer_diagram_reads_its_sizes():
    ax = viz.draw_transfer_learning(width=512, hidden=(64,), num_classes=7)
    assert any("512-64-7" in t.get_text() for t in ax.texts)


def test_live_history_prints_outside_a_notebook_and_keeps_rows(capsys):
    live = viz.LiveHistory(epochs=3)
    for epoch in (1, 2):
        live({"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.5}, None, None)
    assert len(live.history) == 2 and "epoch 2" in capsys.readouterr().out
    fig = live.figure()
    assert isinstance(fig, Figure) and fig.axes[0].get_xlim() == (0.5, 3.5)


def test_not_interactive_outside_a_kernel_or_when_forced_static(monkeypatch):
    assert not widgets.is_interactive()  # pytest is no Jupyter kernel
    monkeypatch.setenv("CIFAR_TL_WIDGETS", "static")
    assert not widgets.is_interactive()


def test_static_browser_is_a_figure_of_labelled_images(ds):
    fig = widgets.dataset_browser(ds, n_static=4, interactive=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert fig.axes[0].get_title().startswith(ds.classes[ds.targets[0]])


def test_interactive_browser_works_without_a_frontend(ds):
    from cifar_tl.data import eval_transform

    box = widgets.dataset_browser(ds, transform=eval_transform(32), interactive=True)
    choice, slider = box.children[0].children
    slider.value = 3
    choice.value = ds.targets[7]
    assert slider.value == 0 and slider.max == 0  # one image of that class in this split


def test_top_k_and_static_upload_chart(ds, tiny_model):
    probs, idx = widgets.top_k(tiny_model, ds.data[0], 32)
    assert probs.shape == idx.shape == (5,) and torch.all(probs[:-1] >= probs[1:])
    fig = widgets.upload_predictor(tiny_model, ds.classes, 32, example=ds.data[0], interactive=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_upload_handles_good_and_bad_files(ds, tiny_model, capsys, monkeypatch):
    import IPython.display

    events = []
    monkeypatch.setattr(widgets, "_show_in", lambda out, fig: events.append("chart"))
    monkeypatch.setattr(IPython.display, "clear_output", lambda wait=False: events.append("cleared"))
    box = widgets.upload_predictor(tiny_model, ds.classes, 32, interactive=True)
    upload = box.children[0]
    upload.value = widgets.upload_bytes_value("photo.png", _png(ds.data[0]))
    assert events == ["chart"]
    upload.value = widgets.upload_bytes_value("我的猫.png", b"not an image")
    out = capsys.readouterr().out
    # The user's own file is named (not the temporary copy), and the previous chart is gone.
    assert "cannot use this file: 我的猫.png:" in out and "upload.png" not in out, out
    assert "无法使用这个文件" in out  # and in Chinese
    assert events == ["chart", "cleared"]


def test_head_explorer_static_trains_once_and_interactive_trains_on_click():
    torch.manual_seed(0)
    y = torch.arange(64) % 4
    feats = torch.randn(64, 2, 16) + 3 * torch.nn.functional.one_hot(y, 16).float()[:, None]
    fig = widgets.head_explorer((feats, y), (feats, y), hidden=16, depth=1, epochs=3, interactive=False)
    assert isinstance(fig, Figure) and "validation accuracy" in fig.axes[0].get_title()
    head, history = widgets.train_head((feats, y), (feats, y), hidden=16, depth=1, epochs=5, lr=1e-2, batch_size=8)
    assert len(history) == 5 and history[-1]["val_accuracy"] > 0.9
    box = widgets.head_explorer((feats, y), (feats, y), hidden=16, depth=0, epochs=2, interactive=True)
    box.children[2].click()
    assert not box.children[2].disabled


def test_head_explorer_marks_its_curve_stale_when_a_control_changes(monkeypatch):
    titles = []
    monkeypatch.setattr(widgets, "_show_in", lambda out, fig: titles.append(fig.axes[0].get_title()))
    y = torch.arange(32) % 4
    feats = torch.randn(32, 2, 8)
    box = widgets.head_explorer((feats, y), (feats, y), hidden=16, depth=1, epochs=2, interactive=True)
    (w_hidden, _), (w_lr, _) = box.children[0].children, box.children[1].children
    w_hidden.value = 32  # no curve yet: nothing to mark
    assert titles == []
    box.children[2].click()
    assert len(titles) == 2 and titles[-1].startswith("head D-32-C")
    w_lr.value = 1e-2
    assert titles[-1].startswith("stale") and "D-32-C, lr 0.001" in titles[-1]  # the old setup, said to be old
    assert "已过时" in titles[-1]
    w_hidden.value = 64
    assert len(titles) == 3  # marked once


def test_train_head_on_a_store_extracts_the_views_its_epochs_sample(tiny_cfg):
    from cifar_tl import data, features

    train_ds = data.build_datasets(tiny_cfg).train
    backbone = models.build_backbone("resnet18", None, seed=0)
    store = features.FeatureStore(tiny_cfg, train_ds, backbone, "cpu", features.VIEWS_TRAIN, use_cache=False)
    store.ensure(features.plan_views(len(train_ds), tiny_cfg.seed, 1))  # one epoch's views: half of them
    before = int(store.present.sum())
    assert before < store.present.numel()
    val = (store.features[:8].nan_to_num(), store.targets[:8])
    _, history = widgets.train_head(store, val, hidden=16, depth=1, epochs=3, batch_size=32,
                                    seed=tiny_cfg.seed, num_classes=100, standardize=True)
    assert store.present.sum() > before and all(np.isfinite(r["train_loss"]) for r in history)


@pytest.mark.parametrize("argv, batch", [
    (["/v/bin/python", "-m", "pytest", "--nbval-lax", "notebooks"], True),
    (["/v/bin/python", "/v/bin/papermill", "in.ipynb", "out.ipynb"], True),
    (["/v/bin/python", "/v/bin/jupyter-nbconvert", "--execute", "x.ipynb"], True),
    (["/v/bin/python", "/v/bin/jupyter-lab", "/home/me/pytest-notes"], False),  # arguments do not count
    (["/v/bin/python", "-m", "ipykernel_launcher", "-f", "k.json"], False),
    ([], False),
])
def test_batch_runners_are_recognised_by_program_name(argv, batch):
    assert widgets._batch_runner(argv) is batch


# ---- Chinese text, notes, figure details ------------------------------------------------------
def _render(text: str, families) -> np.ndarray:
    with matplotlib.rc_context({"font.family": families}):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = Figure(figsize=(1, 1), dpi=40)
        canvas = FigureCanvasAgg(fig)
        fig.text(0.1, 0.3, text, fontsize=30)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()


def _mplfonts_cjk() -> str:
    try:
        import mplfonts
    except ImportError:
        pytest.fail("the dev extra's mplfonts (a real CJK font, from PyPI) is missing: pip install mplfonts")
    from pathlib import Path

    return str(Path(mplfonts.__file__).parent / "fonts" / "NotoSansCJKsc-Regular.otf")


def test_chinese_draws_as_characters_with_a_cjk_font(recwarn):
    from matplotlib import font_manager

    from cifar_tl import fonts

    font_manager.fontManager.addfont(_mplfonts_cjk())
    with matplotlib.rc_context():
        found = fonts.use_cjk_fonts()
        families = list(matplotlib.rcParams["font.family"])
    assert "Noto Sans CJK SC" in found and families[0] not in fonts.CJK_FONTS  # Latin keeps its font
    # Two characters, two shapes; boxes for missing glyphs would be identical.
    assert not np.array_equal(_render("猫", families), _render("狗", families))
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    without = [f for f in families if f not in fonts.CJK_FONTS]
    assert np.array_equal(_render("猫", without), _render("狗", without)), "the check must be able to fail"


def test_without_a_cjk_font_one_notice_instead_of_a_warning_per_glyph(monkeypatch, caplog):
    import warnings

    from cifar_tl import fonts

    monkeypatch.setattr(fonts, "installed_cjk_fonts", lambda: [])
    monkeypatch.setattr(fonts._missing, "noticed", False)
    with matplotlib.rc_context(), warnings.catch_warnings(record=True) as seen, \
            caplog.at_level("WARNING", logger="cifar_tl.fonts"):
        warnings.simplefilter("always")
        assert fonts.use_cjk_fonts() == []
        viz.plot_topk(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0, 1, 2]), ["猫", "狗", "鸟"])
        viz.show_image(np.zeros((4, 4, 3), np.uint8), title="我的猫.jpg")
        for code in (29483, 29399):  # what matplotlib < 3.11 warns, once per glyph
            warnings.warn(f"Glyph {code} (\\N{{CJK UNIFIED IDEOGRAPH-{code:X}}}) missing from font(s) DejaVu Sans.",
                          UserWarning, stacklevel=1)
        warnings.warn("Glyph 9731 (\\N{SNOWMAN}) missing from font(s) DejaVu Sans.", UserWarning, stacklevel=1)
    notices = [r for r in caplog.records if "CJK font" in r.getMessage()]
    assert len(notices) == 1 and "fonts-noto-cjk" in notices[0].getMessage()
    assert [str(w.message) for w in seen] == ["Glyph 9731 (\\N{SNOWMAN}) missing from font(s) DejaVu Sans."]
    assert viz.plot_topk is not None and not fonts.notice_if_missing("plain text")


def test_smoke_note_only_for_synthetic_data_or_a_random_backbone():
    from cifar_tl import Config

    smoke = Config.for_profile("smoke")
    note = viz.smoke_note(smoke)
    assert "synthetic images" in note.data and "generated images" in note.data and "CIFAR-100" in note.data
    assert "Results table" in note.data  # it points to what exists
    assert "预设配置 `smoke`：合成图像和在生成图像上预训练的主干网络" in note.data  # and says it in Chinese
    assert "random" in viz.smoke_note(Config.for_profile("smoke", weights=None)).data
    assert "synthetic images" in viz.smoke_note(Config.for_profile("smoke", source="synthetic-sketch")).data
    assert viz.smoke_note(Config.for_profile("cpu")) is None


def test_pixel_histogram_names_its_channels_with_whole_counts():
    ax = viz.plot_pixel_histogram(torch.rand(3, 4, 4))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["R", "G", "B"]
    ax.figure.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_yticks())


def test_history_legend_sits_below_the_curves():
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.1 * e, "val_loss": 1.2 / e,
             "val_accuracy": 0.08 * e} for e in range(1, 6)]
    ax = viz.plot_history(rows)
    ax.figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0, "the legend overlaps the plot area"


def test_embedding_has_axis_labels():
    ax = viz.plot_embedding(torch.randn(6, 2), [0, 1, 2] * 2, ["x", "y", "z"], axis_labels=("PC 1", "PC 2"))
    assert ax.get_xlabel() == "PC 1" and ax.get_ylabel() == "PC 2"


def test_timings_stack_the_parts_of_one_path():
    ax = viz.plot_timings({"tutorial path": 10.0, "cached path": {"extract": 3.0, "train the head": 1.0}})
    bars = [p for p in ax.patches]
    assert len(bars) == 3 and {t.get_text() for t in ax.texts} == {" 10.0 s", " 4.0 s"}
    extract, head = bars[1], bars[2]
    assert extract.get_y() == head.get_y() and head.get_x() == extract.get_width()  # one bar, stacked


def test_upload_in_colab_uses_colabs_own_upload(ds, tiny_model, monkeypatch, capsys):
    """Colab drops FileUpload files of about 1 MB (ipywidgets #3452): there the chart comes from
    google.colab.files.upload, faked here as the install cell's test fakes Colab."""
    import sys
    import types

    answers = [{"my cat.png": _png(ds.data[0])}, {}, {"notes.txt": b"not an image"}]
    colab = types.ModuleType("google.colab")
    colab.files = types.SimpleNamespace(upload=lambda: answers.pop(0))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert widgets.in_colab()
    fig = widgets.upload_predictor(tiny_model, ds.classes, 32, example=ds.data[1])
    assert isinstance(fig, Figure) and "my cat.png" in fig.axes[0].get_title()
    fig = widgets.upload_predictor(tiny_model, ds.classes, 32, example=ds.data[1])  # Cancel: the example
    assert isinstance(fig, Figure) and "example" in fig.axes[0].get_title()
    assert widgets.upload_predictor(tiny_model, ds.classes, 32, example=ds.data[1]) is None
    assert "cannot use this file: notes.txt" in capsys.readouterr().out
    static = widgets.upload_predictor(tiny_model, ds.classes, 32, example=ds.data[1], interactive=False)
    assert "static" in static.axes[0].get_title() and answers == []  # no upload asked for


def test_uploaded_photo_is_shown_as_the_centre_crop_the_model_sees(ds, tiny_model):
    wide = Image.fromarray(ds.data[0]).resize((96, 32))
    fig = widgets.upload_predictor(tiny_model, ds.classes, 32, example=wide, interactive=False)
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape[:2] == (32, 32) and "centre crop" in fig.axes[0].get_title()


def test_an_interactive_ui_leaves_a_bilingual_run_this_cell_note_for_the_saved_notebook(ds, monkeypatch):
    import IPython
    import IPython.display

    from cifar_tl.data import eval_transform

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as in a kernel
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    widgets.dataset_browser(ds, transform=eval_transform(32), interactive=True)
    notes = [o.data for o in shown if isinstance(o, IPython.display.Markdown)]
    assert len(notes) == 1 and "Error displaying widget" in notes[0] and "run this cell" in notes[0]
    assert "再运行一次这个单元格" in notes[0]
