"""Only the views training samples are extracted, and the head's training data stays bit-identical
to what caching both views of every image gives (same order, same views, same values)."""

import pytest
import torch
from torch import nn

from cifar_tl import features
from cifar_tl.config import Config
from cifar_tl.features import FeatureLoader, FeatureStore, plan_views
from cifar_tl.synthetic import SyntheticCIFAR

N_VIEWS = len(features.VIEWS_TRAIN)


class PixelCode(nn.Module):
    """A stand-in backbone whose features are exact copies of a few preprocessed pixels (the first
    row, which a flip reverses): bit-identical in any batch composition, and different per view.
    A real backbone's float sums depend on the batch it runs in (1e-7), which would hide nothing
    this test is about: which image and which view lands in which batch. It counts what it sees."""

    num_features = 12
    name = "pixel_code"

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(1))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return x[:, :, 0, :4].flatten(1) * self.scale


@pytest.fixture
def setup(tmp_path):
    ds = SyntheticCIFAR(train=True, n_per_class=2, seed=0)  # 200 images
    cfg = Config(backbone="resnet18", weights=None, image_size=32, progress=False, precision="fp32",
                 engine="torch", seed=7, data_root=str(tmp_path / "data"))
    return cfg, ds, PixelCode(), tmp_path / "cache"


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_one_epoch_run_extracts_one_view_per_training_image(setup):
    cfg, ds, code, cache_dir = setup
    feats, _, info = features.cached_features(cfg, ds, code, "cpu", features.VIEWS_TRAIN, cache_dir, epochs=1)
    n = len(ds)
    assert code.seen == n  # the backbone ran on n images, not 2n
    assert (info["views_extracted"], info["views_available"]) == (n, N_VIEWS * n)
    assert torch.equal((~feats.isnan().any(-1)).sum(1), torch.ones(n, dtype=torch.long))


def test_views_per_image_grow_with_epochs_then_all_from_three():
    n = 4000
    per_image = {e: plan_views(n, seed=0, epochs=e).sum().item() / n for e in (1, 2, 3, 5)}
    assert per_image[1] == 1.0
    # 2 epochs: each image needs its second view with probability 1/2; 4,000 images give a
    # standard deviation of 0.008 on the mean: 0.05 is six of them.
    assert abs(per_image[2] - 1.5) < 0.05, per_image
    assert per_image[3] == per_image[5] == 2.0


@pytest.mark.parametrize("epochs", [1, 2])
def test_training_batches_equal_those_of_both_views_cached(setup, epochs):
    cfg, ds, code, cache_dir = setup
    both, targets, _ = features.cached_features(cfg, ds, code, "cpu", features.VIEWS_TRAIN, use_cache=False)
    some, targets2, _ = features.cached_features(cfg, ds, code, "cpu", features.VIEWS_TRAIN,
                                                 use_cache=False, epochs=epochs)
    assert torch.equal(targets, targets2)
    assert some.isnan().any()  # views were left out ...
    for bs in (8, 32):
        full = FeatureLoader(both, targets, bs, train=True, seed=cfg.seed)
        planned = FeatureLoader(some, targets, bs, train=True, seed=cfg.seed)
        for epoch in range(epochs):  # ... and none of them was needed
            _assert_same_batches(_batches(planned, epoch), _batches(full, epoch))


def test_missing_views_are_extracted_when_a_later_epoch_samples_them(setup):
    cfg, ds, code, cache_dir = setup
    both, targets, _ = features.cached_features(cfg, ds, PixelCode(), "cpu", features.VIEWS_TRAIN, use_cache=False)
    store = FeatureStore(cfg, ds, code, "cpu", features.VIEWS_TRAIN, cache_dir)
    store.ensure(plan_views(len(ds), cfg.seed, 1))
    loader = FeatureLoader(store.features, store.targets, 8, train=True, seed=cfg.seed, store=store)
    full = FeatureLoader(both, targets, 8, train=True, seed=cfg.seed)
    seen = code.seen
    _assert_same_batches(_batches(loader, 0), _batches(full, 0))
    assert code.seen == seen  # epoch 0 was planned
    _assert_same_batches(_batches(loader, 1), _batches(full, 1))  # epoch 1 was not
    assert code.seen > seen
    # What was added is in the cache file: a run of 2 epochs now extracts nothing.
    again = PixelCode()
    _, _, info = features.cached_features(cfg, ds, again, "cpu", features.VIEWS_TRAIN, cache_dir, epochs=2)
    assert again.seen == 0 and info["hit"]


def test_a_longer_run_extracts_only_the_views_it_adds(setup):
    """As ``--resume --epochs 2`` after a 1-epoch run: the cache holds epoch 1's views."""
    cfg, ds, code, cache_dir = setup
    n = len(ds)
    features.cached_features(cfg, ds, code, "cpu", features.VIEWS_TRAIN, cache_dir, epochs=1)
    seen = code.seen
    _, _, info = features.cached_features(cfg, ds, code, "cpu", features.VIEWS_TRAIN, cache_dir, epochs=2)
    added = int(plan_views(n, cfg.seed, 2).sum() - plan_views(n, cfg.seed, 1).sum())
    assert 0 < added < n
    assert code.seen - seen == added == info["views_extracted_now"]
    assert info["views_extracted"] == int(plan_views(n, cfg.seed, 2).sum())


def test_views_extracted_now_counts_views_when_both_are_extracted_at_once(setup):
    """A 3-epoch run extracts both views of every image in one pass: that is 2 views per image,
    and the count in metrics.json's cache info must say so (not the number of images)."""
    cfg, ds, code, cache_dir = setup
    n = len(ds)
    _, _, info = features.cached_features(cfg, ds, code, "cpu", features.VIEWS_TRAIN, cache_dir, epochs=3)
    assert info["views_extracted_now"] == info["views_extracted"] == N_VIEWS * n == code.seen
    # Both kinds at once: half the images have one view, then every view is asked for.
    store = FeatureStore(cfg, ds, PixelCode(), "cpu", features.VIEWS_TRAIN, use_cache=False)
    half = torch.zeros(n, N_VIEWS, dtype=torch.bool)
    half[: n // 2, 0] = True
    assert store.ensure(half) == n // 2
    assert store.ensure(None) == N_VIEWS * n - n // 2 == store.backbone.seen - n // 2
    assert store.info["views_extracted_now"] == N_VIEWS * n


def test_the_training_loader_draws_the_batches_it_drew_before_views_were_planned():
    """The draw of the loader that cached both views of every image, written out: one generator
    per epoch seeded by config.epoch_seed, a permutation, then one view per sample."""
    from cifar_tl.config import epoch_seed

    n, bs, seed = 50, 8, 3
    f = torch.arange(n * N_VIEWS * 2, dtype=torch.float32).view(n, N_VIEWS, 2)
    y = torch.arange(n)
    loader = FeatureLoader(f, y, bs, train=True, seed=seed)
    for epoch in range(3):
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order, views = torch.randperm(n, generator=g), torch.randint(N_VIEWS, (n,), generator=g)
        expected = [(f[i, views[i]], y[i]) for i in order[: n - n % bs].split(bs)]
        _assert_same_batches(_batches(loader, epoch), expected)


def test_a_result_does_not_depend_on_what_earlier_runs_left_in_the_cache(tiny_cfg, tmp_path, one_thread):
    """A 3-epoch run fills in every view; a 2-epoch run after it must give the head of a 2-epoch run
    on a cold cache (the standardisation was once fitted on whatever views the cache held)."""
    from cifar_tl import pipeline

    tiny_cfg = tiny_cfg.replace(weights=None)  # random weights: the head standardises its features
    warm = tiny_cfg.replace(data_root=str(tmp_path / "warm"))
    pipeline.run(warm.replace(epochs=3), tmp_path / "three")
    pipeline.run(warm.replace(epochs=2), tmp_path / "two-warm")
    pipeline.run(tiny_cfg.replace(epochs=2, data_root=str(tmp_path / "cold")), tmp_path / "two-cold")
    heads = [torch.load(tmp_path / name / "head.pt", weights_only=True)["state_dict"] for name in ("two-warm", "two-cold")]
    assert heads[0].keys() == heads[1].keys()
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
