"""Data: transforms, collate_fn, loaders, sources, subsets."""

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_tl import data
from cifar_tl.data import collate_fn, eval_transform, make_loader, train_transform
from cifar_tl.synthetic import SyntheticCIFAR


def _asymmetric_image():
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[:, :8] = 255  # a bright left edge: flipping moves it to the right
    return Image.fromarray(a)


def test_eval_transform_has_no_flip():
    t = eval_transform(64)
    assert not any(isinstance(s, type(train_transform(64).transforms[2])) for s in t.transforms)
    img = _asymmetric_image()
    outs = [t(img) for _ in range(20)]
    assert all(torch.equal(outs[0], o) for o in outs)
    assert outs[0][:, :, :8].mean() > outs[0][:, :, -8:].mean()  # never flipped


def test_train_transform_flips_about_half_the_time():
    torch.manual_seed(0)
    t = train_transform(32)
    img = _asymmetric_image()
    outs = [t(img) for _ in range(200)]
    flipped = sum(bool(x[:, :, -4:].mean() > x[:, :, :4].mean()) for x in outs)
    assert 60 < flipped < 140


def test_transform_output_shape_and_normalisation():
    x = eval_transform(300)(_asymmetric_image())
    assert x.shape == (3, 300, 300) and x.dtype == torch.float32
    assert x.min() < 0  # ImageNet-normalised


def test_collate_fn_stacks_images_and_labels():
    batch = [(torch.zeros(3, 4, 4), 1), (torch.ones(3, 4, 4), 7)]
    x, y = collate_fn(batch)
    assert x.shape == (2, 3, 4, 4) and y.dtype == torch.long and y.tolist() == [1, 7]


def test_test_loader_is_ordered_and_drops_nothing():
    ds = SyntheticCIFAR(train=False, n_per_class=1, transform=eval_transform(32))
    loader = make_loader(ds, 8, train=False)
    ys = torch.cat([y for _, y in loader])
    assert ys.tolist() == list(ds.targets)  # every sample once, in order, none dropped (100 % 8 != 0)


def test_train_loader_shuffle_is_seeded():
    ds = SyntheticCIFAR(train=True, n_per_class=1, transform=eval_transform(32))
    a = torch.cat([y for _, y in make_loader(ds, 8, train=True, seed=3)])
    b = torch.cat([y for _, y in make_loader(ds, 8, train=True, seed=3)])
    assert torch.equal(a, b) and a.tolist() != sorted(a.tolist())
    assert len(a) == 96  # drop_last as in the tutorial


def test_synthetic_is_deterministic_and_splits_differ():
    a, b = SyntheticCIFAR(True, 2, seed=1), SyntheticCIFAR(True, 2, seed=1)
    assert np.array_equal(a.data, b.data) and a.targets == b.targets
    assert not np.array_equal(a.data, SyntheticCIFAR(True, 2, seed=2).data)
    assert not np.array_equal(a.data, SyntheticCIFAR(False, 2, seed=1).data)
    assert a.data.shape == (200, 32, 32, 3) and a.data.dtype == np.uint8
    img, y = a[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= y < 100
    assert len(a.classes) == 100 and len(a.coarse_classes) == 20


def test_balanced_subset():
    targets = np.repeat(np.arange(10), 50)
    idx = data.balanced_indices(targets, 95, seed=0)
    counts = np.bincount(targets[idx], minlength=10)
    assert len(idx) == 95 and counts.max() - counts.min() <= 1


def test_build_source_subsets_synthetic(tiny_cfg):
    ds = data.build_source(tiny_cfg, train=True)
    assert len(ds) == 200 and len(ds.data) == 200 and len(ds.coarse_targets) == 200
    assert np.bincount(ds.targets, minlength=100).min() == 2


def test_cifar100_metadata():
    meta = data.cifar100_meta()
    assert len(meta["fine"]) == 100 and meta["fine"] == sorted(meta["fine"])
    assert len(meta["coarse"]) == 20
    assert np.bincount(meta["fine_to_coarse"], minlength=20).tolist() == [5] * 20
    assert meta["coarse"][meta["fine_to_coarse"][meta["fine"].index("whale")]] == "aquatic_mammals"


def test_missing_cifar_offline_is_one_clear_line(tmp_path):
    with pytest.raises(data.AssetMissingError) as e:
        data.cifar100(tmp_path / "nothing", train=False, download=False)
    assert "download" in str(e.value) and "\n" not in str(e.value)


def test_image_folder_source(tmp_path):
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("RGB", (40 + i, 30), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    train = data.image_folder(tmp_path, train=True)
    test = data.image_folder(tmp_path, train=False)
    assert train.classes == ["cats", "dogs"]
    assert len(train) + len(test) == 10 and len(test) == 2
    assert not set(s for s, _ in train.samples) & set(s for s, _ in test.samples)
