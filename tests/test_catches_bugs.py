"""Tests that catch real bugs (issue 9): each one fails when the behaviour it names breaks.

Every test here was checked by breaking the library on purpose (one replacement at a time, with
/tmp/team/mutate.py) and seeing it go red; the expected values are computed independently of
the code under test (hard-coded ImageNet constants, torchvision's own transforms, crafted logits).
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from cifar_tl import Config, checkpoint, data, engine, features, inference, pipeline, viz, widgets  # noqa: E402
from cifar_tl.models import MLPHead, build_backbone  # noqa: E402

# The ImageNet statistics, written out here: the test must not share a wrong constant with the code.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _normalise():
    return T.Normalize(mean=MEAN, std=STD)


# --------------------------------------------------------------------------- 1. standardisation statistics
def _stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std as ``Standardize.fit_stats`` defines them (float64), the std with
    its floor for features that never vary (a ReLU that is always 0)."""
    f = f.reshape(-1, f.shape[-1]).double()
    std = f.std(0)
    return f.mean(0), std.clamp_min(1e-4 * float(std.max()) + 1e-30)


@pytest.mark.parametrize("cache", [True, False], ids=["cached-features", "tutorial-path"])
def test_head_standardisation_uses_the_training_features_not_the_test_features(tmp_path, one_thread, cache):
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32, train_size=200, test_size=100,
                             epochs=1, progress=False, cache=cache, data_root=str(tmp_path / "data"),
                             weights=None, standardize=True)
    out = tmp_path / "run"
    pipeline.run(cfg, out)
    head, _ = checkpoint.load_head(out / "head.pt")
    got_mean, got_std = head.standardizer.mean.double(), head.standardizer.std.double()

    # The training features, computed here: the same backbone, the views the one epoch sampled.
    train_ds, _, test_ds = data.build_datasets(cfg)
    backbone = build_backbone(cfg.backbone, cfg.weights, cfg.seed)
    tr_f, _, _ = features.cached_features(cfg, train_ds, backbone, "cpu", features.VIEWS_TRAIN, use_cache=False)
    if cache:  # the fast path: the one view per image that its one epoch samples
        tr_f = tr_f[features.plan_views(len(train_ds), cfg.seed, cfg.epochs)]
    else:  # the tutorial path: up to 1,000 training images, unflipped
        tr_f = tr_f[:1000, 0]
    te_f, _, _ = features.cached_features(cfg, test_ds, backbone, "cpu", features.VIEWS_TEST, use_cache=False)
    tr_mean, tr_std = _stats(tr_f)
    te_mean, te_std = _stats(te_f)

    # Measured in units of the training features' spread.
    assert ((got_mean - tr_mean).abs() / tr_std).max() < 1e-3
    assert ((got_std / tr_std) - 1).abs().max() < 1e-3
    # ... and the test features' statistics are far from those: this test can tell them apart.
    assert ((te_mean - tr_mean).abs() / tr_std).max() > 0.2
    assert ((te_std / tr_std) - 1).abs().max() > 0.1


# --------------------------------------------------------------------------- helpers: a checkpoint
NAMES = ["apple", "bus", "cat", "dog", "eel", "fox", "gnu"]
# The head below outputs exactly these logits whatever the image: class 3 ("dog") wins, then 5, 1, 6, 4.
BIAS = torch.tensor([0.5, 3.0, -1.0, 6.0, 1.5, 4.5, 2.0])


def _checkpoint(tmp_path, image_size: int = 32):
    """A head.pt for a random resnet18 whose last layer ignores the features and outputs BIAS."""
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=image_size, data_root=str(tmp_path / "data"))
    backbone = build_backbone(cfg.backbone, cfg.weights, cfg.seed)
    torch.manual_seed(0)
    head = MLPHead(backbone.num_features, len(NAMES), hidden=(8,))
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.copy_(BIAS)
    path = tmp_path / "head.pt"
    checkpoint.save_head(path, head, config=cfg, class_names=NAMES,
                         backbone_fingerprint=checkpoint.backbone_fingerprint(backbone))
    return path


def _photo(tmp_path, w: int = 64, h: int = 48, name: str = "photo.png"):
    rng = np.random.default_rng(1)
    path = tmp_path / name
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- 2. predict's class names
def test_predict_names_the_class_of_the_index_it_predicts(tmp_path, one_thread):
    ckpt, photo = _checkpoint(tmp_path), _photo(tmp_path)
    [(file, top)] = inference.predict_files(ckpt, [photo], k=5)
    assert file == str(photo)
    order = BIAS.argsort(descending=True)[:5].tolist()
    assert order == [3, 5, 1, 6, 4]
    assert [name for name, _ in top] == [NAMES[i] for i in order] == ["dog", "fox", "bus", "gnu", "eel"]
    expected = BIAS.softmax(0)[order]
    assert torch.allclose(torch.tensor([p for _, p in top]), expected, atol=1e-6)


# --------------------------------------------------------------------------- 5. predict's image size
@pytest.mark.parametrize("image_size", [40, 24])
def test_predict_resizes_to_the_checkpoint_image_size(tmp_path, monkeypatch, one_thread, image_size):
    ckpt, photo = _checkpoint(tmp_path, image_size), _photo(tmp_path, 64, 48)
    seen = []
    real_predict = engine.predict

    def spy(model, x, *args, **kwargs):
        seen.append(x.clone())
        return real_predict(model, x, *args, **kwargs)

    monkeypatch.setattr(engine, "predict", spy)
    [(_, top)] = inference.predict_files(ckpt, [photo])
    assert [name for name, _ in top][0] == "dog"
    # What the model must receive: torchvision's Resize (shorter side) + CenterCrop at the
    # checkpoint's size, ToTensor, and ImageNet's normalisation.
    expected = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), _normalise()])(
        Image.open(photo).convert("RGB"))
    [x] = seen
    assert x.shape == (1, 3, image_size, image_size)
    assert torch.allclose(x[0], expected, atol=1e-6)


# --------------------------------------------------------------------------- 3. top_k on any image mode
class _Recorder(nn.Module):
    """A 'model' that remembers its input and scores it with a fixed random linear map: any pixel
    difference changes its answer."""

    def __init__(self, image_size: int, classes: int = 10):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * image_size * image_size, classes, generator=g))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.w


def _modes():
    """(name, image in that mode, the RGB picture it shows: alpha 0 -> white, 255 -> the colour)."""
    rng = np.random.default_rng(3)
    g = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    alpha = np.where(rng.random((20, 24)) < 0.4, 0, 255).astype(np.uint8)
    opaque = alpha[..., None] == 255
    gray3 = np.repeat(g[..., None], 3, axis=2)
    # Transparent pixels hold black (0) underneath: dropping the alpha would show black, not white.
    g_under = np.where(alpha == 255, g, 0).astype(np.uint8)
    rgb_under = np.where(opaque, rgb, 0).astype(np.uint8)
    white = np.full_like(rgb, 255)
    return [
        ("L", Image.fromarray(g, "L"), gray3),
        ("LA", Image.fromarray(np.dstack([g_under, alpha]), "LA"), np.where(opaque, gray3, white)),
        ("RGBA", Image.fromarray(np.dstack([rgb_under, alpha]), "RGBA"), np.where(opaque, rgb, white)),
        ("2-D array", g, gray3),
    ]


@pytest.mark.parametrize("name", ["L", "LA", "RGBA", "2-D array"])
def test_top_k_takes_any_image_mode_as_the_rgb_picture_it_shows(name):
    image_size = 16
    [(_, image, as_rgb)] = [m for m in _modes() if m[0] == name]
    model = _Recorder(image_size)
    probs, idx = widgets.top_k(model, image, image_size, k=5)
    probs_rgb, idx_rgb = widgets.top_k(model, Image.fromarray(as_rgb, "RGB"), image_size, k=5)
    seen, seen_rgb = model.seen
    assert seen.shape == seen_rgb.shape == (1, 3, image_size, image_size)
    assert torch.equal(seen, seen_rgb)
    assert idx.tolist() == idx_rgb.tolist() and torch.allclose(probs, probs_rgb)
    # The RGB reference is the eval transform of that picture (independently of the library).
    ref = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), _normalise()])(
        Image.fromarray(as_rgb, "RGB"))
    assert torch.allclose(seen_rgb[0], ref, atol=1e-6)


# --------------------------------------------------------------------------- 4, 8. top-5 accuracy
def _ranked_logits(num_classes: int, seed: int = 0):
    """One sample per rank r = 0..C-1: its target is the class its logits rank r-th."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_classes, num_classes, generator=g) * 3
    order = logits.argsort(1, descending=True)
    targets = order[torch.arange(num_classes), torch.arange(num_classes)]
    return logits, targets


def _evaluate(logits, targets, batch: int = 4):
    loader = [(logits[i : i + batch], targets[i : i + batch]) for i in range(0, len(targets), batch)]
    return engine.evaluate(nn.Identity(), loader, "cpu", progress=False)


@pytest.mark.parametrize("num_classes", [6, 10, 37])
def test_top5_counts_a_target_ranked_second_to_fifth(num_classes):
    logits, targets = _ranked_logits(num_classes)
    ev = _evaluate(logits, targets)
    assert ev.n == num_classes
    assert ev.accuracy == pytest.approx(1 / num_classes)
    assert ev.top5 == pytest.approx(5 / num_classes)
    # Each sample ranked 2nd..5th alone is a top-5 hit (and a top-1 miss).
    for r in range(1, 5):
        one = _evaluate(logits[r : r + 1], targets[r : r + 1])
        assert (one.accuracy, one.top5) == (0.0, 1.0), r
    assert ev.top5_preds.shape == (num_classes, 5)
    assert ev.preds.tolist() == logits.argmax(1).tolist()


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_top5_is_none_with_five_classes_or_fewer(num_classes):
    logits, targets = _ranked_logits(num_classes)
    ev = _evaluate(logits, targets)
    assert ev.top5 is None
    assert ev.accuracy == pytest.approx(1 / num_classes)


def test_top5_is_a_number_from_six_classes_on():
    logits, targets = _ranked_logits(6)
    ev = _evaluate(logits, targets)
    assert isinstance(ev.top5, float) and ev.top5 == pytest.approx(5 / 6)


# --------------------------------------------------------------------------- 6. viz un-normalising
@pytest.mark.parametrize("seed", [0, 1])
def test_to_image_undoes_the_imagenet_normalisation(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    img[0, 0], img[0, 1] = 0, 255  # the extremes, and a negative value to mark it normalised
    x = _normalise()(T.ToTensor()(Image.fromarray(img)))  # CHW, as the model receives it
    back = viz.to_image(x)
    assert back.shape == img.shape
    assert np.abs(back * 255 - img.astype(np.float64)).max() <= 1.0
    # A batch-free HWC array of the same values un-normalises the same way.
    back_hwc = viz.to_image(x.permute(1, 2, 0).numpy())
    assert np.abs(back_hwc * 255 - img.astype(np.float64)).max() <= 1.0


# --------------------------------------------------------------------------- 7. dataset browser's class filter
class _Tiny:
    """The parts of the dataset contract the browser's index logic uses (drawing is spied on)."""

    def __init__(self):
        self.classes = ["ant", "bee", "cow", "doe"]
        self.targets = [2, 0, 1, 2, 3, 1, 2, 0, 3, 2, 1]

    def __len__(self):
        return len(self.targets)


def test_dataset_browser_class_filter_shows_exactly_that_class(monkeypatch):
    ds = _Tiny()
    drawn = []
    monkeypatch.setattr(widgets, "draw_sample", lambda ds, i, transform=None, fig=None: drawn.append(i))
    monkeypatch.setattr(widgets, "_show_in", lambda out, fig: None)
    box = widgets.dataset_browser(ds, interactive=True)
    choice, slider = box.children[0].children
    values = dict(choice.options)  # label -> value, as a person picks by name
    assert set(values) == {"all classes", *ds.classes}

    def reachable():  # what the image shows from choosing the filter to moving the slider end to end
        for v in range(slider.max, -1, -1):  # from the top down, so the value changes each time
            slider.value = v
        return set(drawn)

    for name in ["cow", "ant", "doe", "bee"]:
        drawn.clear()
        choice.value = values[name]
        c = ds.classes.index(name)
        wanted = {i for i, t in enumerate(ds.targets) if t == c}
        assert slider.max == len(wanted) - 1, name
        assert reachable() == wanted, name
        assert all(ds.targets[i] == c for i in drawn), name
    drawn.clear()
    choice.value = values["all classes"]
    assert slider.max == len(ds) - 1
    assert reachable() == set(range(len(ds)))


def test_to_image_undoes_the_normalisation_of_a_bright_picture_too():
    """A uniform pixel of 200 normalises to values above 1 and none below 0."""
    import numpy as np

    from cifar_tl import viz

    raw = np.full((4, 5, 3), 200, dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(((raw / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)
    assert float(x.min()) > 0
    for normalized in (None, True):
        back = viz.to_image(x, normalized=normalized) * 255
        assert np.abs(back - raw).max() <= 1, normalized
    plain = torch.full((3, 4, 5), 0.5)  # a ToTensor image, not normalised
    assert np.allclose(viz.to_image(plain), 0.5)
