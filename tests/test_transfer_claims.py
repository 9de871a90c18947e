"""What transfer learning buys, on smoke data (issue 15, section 2): each claim a test that fails
when the backbone's pretraining is switched off (``--weights synthetic`` left random).

Everything is chosen and compared on a validation part held out of the training split (class
balanced, seeded), never on the test split. ``benchmarks/bench_pretrain.py`` prints the same
figures from the same functions.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cifar_tl import Config, data, engine, features, finetune
from cifar_tl.models import MLPHead, TransferModel, build_backbone

# Switch the pretraining off (the check the issue asks for): PRETRAINED = None.
PRETRAINED = "synthetic"
PER_CLASS_TRAIN, PER_CLASS_VAL = 5, 5
SHIFTED_PER_CLASS_TRAIN = 10  # fine-tuning needs more images than a head to pay (benchmarks/README.md)


def splits(source: str = "synthetic", seed: int = 0, per_class_train: int | None = None):
    """(train, validation) of ``source``: the library's validation split (``--val-size``) holds
    PER_CLASS_VAL images per class out of the training subset, training keeps ``per_class_train``
    (PER_CLASS_TRAIN by default)."""
    n = 100 * ((per_class_train or PER_CLASS_TRAIN) + PER_CLASS_VAL)
    cfg = Config.for_profile("smoke", source=source, train_size=n, val_size=100 * PER_CLASS_VAL, seed=seed)
    train, val, _ = data.build_datasets(cfg, download=False)
    return train, val


def image_tensor(ds) -> torch.Tensor:
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()


def frozen_head(backbone, train_ds, val_ds, *, standardize: bool, lr: float = 1e-3, epochs: int = 15,
                seed: int = 0, image_size: int = 32) -> tuple[float, MLPHead]:
    """The tutorial's head (D-256-256-C) on frozen features: validation accuracy after ``epochs``."""
    tr = features.extract(backbone, image_tensor(train_ds), image_size, "cpu", features.VIEWS_TRAIN, progress=False)
    va = features.extract(backbone, image_tensor(val_ds), image_size, "cpu", features.VIEWS_TEST, progress=False)
    torch.manual_seed(seed)
    head = MLPHead(backbone.num_features, 100, (256, 256), standardize)
    if standardize:
        head.standardizer.fit_stats(tr)
    train_loader = features.FeatureLoader(tr, torch.tensor(train_ds.targets), 32, train=True, seed=seed)
    val_loader = features.FeatureLoader(va, torch.tensor(val_ds.targets), 256, train=False)
    hist = engine.fit(head, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=False)
    return hist[-1]["val_accuracy"], head


@pytest.fixture(scope="module")
def target():
    return splits("synthetic")


@pytest.fixture(scope="module")
def shifted():
    return splits("synthetic-sketch", per_class_train=SHIFTED_PER_CLASS_TRAIN)


def test_pretrained_features_and_the_bare_head_beat_a_random_backbone_by_far(target, one_thread):
    train_ds, val_ds = target
    pretrained, _ = frozen_head(build_backbone("resnet18", PRETRAINED), train_ds, val_ds, standardize=False)
    random, _ = frozen_head(build_backbone("resnet18", None), train_ds, val_ds, standardize=True)
    # Measured 0.520 against 0.226 (2.3x, +29 points; benchmarks/README.md). The bar: 2x and 25 points.
    assert pretrained >= 2 * random and pretrained >= random + 0.25, (pretrained, random)
    assert pretrained < 1.0  # the target is not trivial


def fine_tuned(train_ds, val_ds, *, k: int = 2, lr_decay: float = 0.3, bn_train: bool = False,
               head_epochs: int = 5, epochs: int = 3, seed: int = 0) -> float:
    """The frozen head's recipe for ``head_epochs``, then the top ``k`` stages with it at batch 8:
    validation accuracy."""
    backbone = build_backbone("resnet18", PRETRAINED)
    _, head = frozen_head(backbone, train_ds, val_ds, standardize=False, epochs=head_epochs, seed=seed)
    model = TransferModel(backbone, head)
    finetune.unfreeze(model.backbone, k, bn_train)
    cfg = Config.for_profile("smoke", backbone="resnet18", image_size=32, weights=PRETRAINED, lr_decay=lr_decay,
                             bn_train=bn_train, seed=seed, progress=False)
    hist = finetune.fine_tune(model, train_ds, val_ds, cfg, "cpu", epochs=epochs, batch_size=8)
    return hist[-1]["val_accuracy"]


@pytest.fixture(scope="module")
def shifted_results(shifted):
    """Validation accuracy on the shifted target (sketches): the frozen head, and fine-tuning the
    top 2 stages with discriminative rates (lr_decay 0.3) or one rate (1.0). What ``bn_train`` does
    at batch 8 is measured by ``benchmarks/bench_pretrain.py --claims`` and stated there, not
    asserted."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_ds, val_ds = shifted
    backbone = build_backbone("resnet18", PRETRAINED)
    frozen, _ = frozen_head(backbone, train_ds, val_ds, standardize=False, epochs=8)
    results = {"frozen": frozen,
               "decay 0.3": fine_tuned(train_ds, val_ds, lr_decay=0.3),
               "decay 1.0": fine_tuned(train_ds, val_ds, lr_decay=1.0)}
    torch.set_num_threads(threads)
    return results


def test_on_a_shifted_target_fine_tuning_the_top_stages_beats_the_frozen_head(shifted_results):
    r = shifted_results
    # Measured 0.402 against 0.308 (benchmarks/README.md); random weights: about 0.02 both,
    # which the floor tells apart from a pretrained backbone.
    assert r["decay 0.3"] >= r["frozen"] + 0.05 and r["decay 0.3"] >= 0.25, r


def test_discriminative_learning_rates_do_at_least_as_well_as_one_rate(shifted_results):
    r = shifted_results
    # Measured 0.402 against 0.386 for one rate; the tolerance is one run's noise (2 points).
    assert r["decay 0.3"] >= r["decay 1.0"] - 0.02 and r["decay 0.3"] >= 0.25, r


def lr_finder_runs(backbone, train_ds, val_ds, seeds=(0, 1, 2)) -> dict:
    """{seed: (the LR finder's suggestion, {0.1: accuracy, 1: ..., 10: ...})}: the bare head's
    validation accuracy at the suggestion, 10x below and 10x above, per seed of the head (its
    initialisation and batch order). ``benchmarks/bench_pretrain.py`` prints the same."""
    tr = features.extract(backbone, image_tensor(train_ds), 32, "cpu", features.VIEWS_TRAIN, progress=False)
    found = {}
    for seed in seeds:
        torch.manual_seed(seed)
        head = MLPHead(backbone.num_features, 100, (256, 256), standardize=False)
        loader = features.FeatureLoader(tr, torch.tensor(train_ds.targets), 32, train=True, seed=seed)
        suggestion = engine.lr_find(copy.deepcopy(head), loader)["suggestion"]
        found[seed] = (suggestion, {f: frozen_head(backbone, train_ds, val_ds, standardize=False, lr=suggestion * f,
                                                   seed=seed)[0] for f in (0.1, 1, 10)})
    return found


@pytest.fixture(scope="module")
def lr_results(target):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    found = lr_finder_runs(build_backbone("resnet18", PRETRAINED), *target)
    torch.set_num_threads(threads)
    return found


def test_the_lr_finders_suggestion_trains_at_least_as_well_as_ten_times_more_or_less(lr_results):
    # Measured, seeds 0/1/2 (benchmarks/README.md): suggestion 0.514/0.510/0.520, 10x below
    # 0.340/0.414/0.248, 10x above 0.512/0.500/0.552; on average 0.515 against 0.334 and 0.521.
    # One seed's noise is about 2 points (10 of 500 images), so the claim is asserted on the
    # average of three, within 2 points. Random weights: 0.02 at every rate, below the floor.
    mean = {f: sum(acc[f] for _, acc in lr_results.values()) / len(lr_results) for f in (0.1, 1, 10)}
    assert mean[1] >= max(mean[0.1], mean[10]) - 0.02 and mean[1] >= 0.4, lr_results
