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


# --------------------------------------------------------------------------- constants and the contract
def test_imagenet_constants_are_the_weights_own():
    """The tutorial's Normalize must use the statistics the pretrained backbone was trained with."""
    import torchvision

    t = torchvision.models.EfficientNet_V2_S_Weights.IMAGENET1K_V1.transforms()
    assert list(data.IMAGENET_MEAN) == list(t.mean) and list(data.IMAGENET_STD) == list(t.std)


def test_synthetic_superclasses_hold_five_fine_classes_each():
    from cifar_tl import synthetic

    assert len(synthetic.FINE_TO_COARSE) == 100 and len(synthetic.COARSE_CLASSES) == 20
    assert np.bincount(synthetic.FINE_TO_COARSE, minlength=20).tolist() == [5] * 20
    ds = SyntheticCIFAR(True, 1)
    assert ds.fine_to_coarse == synthetic.FINE_TO_COARSE
    assert all(ds.coarse_targets[i] == ds.fine_to_coarse[t] for i, t in enumerate(ds.targets))
    for fine, coarse in enumerate(synthetic.FINE_TO_COARSE):  # the superclass shares the texture
        assert synthetic.CLASSES[fine].split()[1] == synthetic.COARSE_CLASSES[coarse].split()[1]


def _check_contract(ds, split):
    assert ds.split == split and len(ds.targets) == len(ds)
    assert all(0 <= t < len(ds.classes) for t in ds.targets)
    if ds.coarse_classes is not None:
        assert [ds.fine_to_coarse[t] for t in ds.targets] == list(ds.coarse_targets)
    else:
        assert ds.coarse_targets is None and ds.fine_to_coarse is None
    assert (ds.data is None) != (ds.paths is None)
    for i in (0, len(ds) - 1):
        raw = ds.raw_image(i)
        if ds.data is not None:
            assert np.array_equal(raw, ds.data[i]) and raw.dtype == np.uint8 and raw.shape[-1] == 3
        else:
            assert isinstance(raw, Image.Image) and raw.mode == "RGB"
        img, y = ds[i]
        assert isinstance(img, Image.Image) and y == ds.targets[i]
        assert np.array_equal(np.asarray(img), np.asarray(raw))


def test_every_source_and_subset_keeps_the_dataset_contract(tiny_cfg, tmp_path):
    for c in ("cats", "dogs"):
        (tmp_path / "p" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20 + i, 16), (i * 40, 0, 0)).save(tmp_path / "p" / c / f"{i}.png")
    folder = tiny_cfg.replace(source=f"folder:{tmp_path / 'p'}", train_size=None, test_size=None)
    for cfg in (tiny_cfg, folder, folder.replace(train_size=4, test_size=2)):  # 10 train, 2 test images
        for train in (True, False):
            ds = data.build_source(cfg, train=train)
            _check_contract(ds, "train" if train else "test")
            assert isinstance(ds, data.Subset) == (train and cfg.train_size == 4)


def test_a_subset_leaves_its_source_unchanged(tiny_cfg):
    full = SyntheticCIFAR(True, 3)
    before = (full.data.copy(), list(full.targets), list(full.coarse_targets))
    sub = data.Subset(full, data.balanced_indices(full.targets, 100, seed=0))
    assert len(sub) == 100 and len(sub.data) == 100 and sorted(sub.targets) == list(range(100))
    assert np.array_equal(full.data, before[0]) and full.targets == before[1] and full.coarse_targets == before[2]
    assert np.array_equal(sub.raw_image(5), full.data[sub.indices[5]])
    sub.transform = eval_transform(32)
    assert full.transform is None and sub[0][0].shape == (3, 32, 32)


def test_the_source_registry_and_its_refusals(tiny_cfg):
    assert set(data.SOURCES) == {"cifar100", "synthetic", "synthetic-sketch", "folder"}
    assert data.check_source("folder:~/photos") == ("folder", "~/photos")
    for bad, needle in (("imagenet", "unknown source 'imagenet'"), ("synthetic:3", "unknown source"),
                        ("folder:", "needs a path"), ("folder:  ", "needs a path"), (3, "source must be")):
        with pytest.raises(data.ConfigError) as e:
            data.check_source(bad)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_sketch_source_draws_the_same_classes_in_another_domain(tiny_cfg):
    photo = data.build_source(tiny_cfg, train=True)
    sketch = data.build_source(tiny_cfg.replace(source="synthetic-sketch"), train=True)
    assert sketch.classes == photo.classes and sketch.fine_to_coarse == photo.fine_to_coarse
    assert len(sketch) == len(photo) and sketch.data.shape == photo.data.shape
    # light paper against a dark scene: the domain shift fine-tuning is for
    assert sketch.data.mean() > 170 > 100 > photo.data.mean()
    again = data.build_source(tiny_cfg.replace(source="synthetic-sketch"), train=True)
    assert np.array_equal(sketch.data, again.data) and not np.array_equal(sketch.data, photo.data)


@pytest.mark.parametrize("field", ["train_size", "test_size"])
def test_fewer_than_one_image_per_class_is_refused(tiny_cfg, field):
    with pytest.raises(data.DataError) as e:
        data.build_source(tiny_cfg.replace(**{field: 50}), train=field == "train_size")
    option = "--" + field.replace("_", "-")
    assert f"{option} 50 is fewer than one image per class (100 classes): use {option} 100 or more" == str(e.value)
