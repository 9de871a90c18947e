"""Fine-tuning: what unfreezes and what stays bit-identical, BatchNorm statistics, learning rates
of each group and their schedule, the LR finder, model.pt, resuming."""

import copy
import math

import pytest
import torch
from torch import nn

from cifar_tl import checkpoint, data, engine, finetune
from cifar_tl.errors import CheckpointError, ConfigError
from cifar_tl.models import TransferModel


@pytest.fixture
def setup(tiny_cfg, one_thread):
    """resnet18 (random, stages conv1+bn1, layer1..layer4) at 32 px on 200 synthetic images."""
    cfg = tiny_cfg.replace(lr_decay=0.5, weight_decay=0.01, batch_size=32)
    train_ds, _, test_ds = data.build_datasets(cfg)
    torch.manual_seed(0)
    model = TransferModel.from_config(cfg, num_classes=len(train_ds.classes))
    return cfg, model, train_ds, test_ds


def _state(model):
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def _changed(before, after, prefix):
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def test_only_the_unfrozen_stages_change(setup):
    cfg, model, train_ds, test_ds = setup
    finetune.unfreeze(model.backbone, 2)
    before = _state(model)
    finetune.fine_tune(model, train_ds, test_ds, cfg, "cpu", epochs=1)
    after = model.backbone.state_dict()
    for frozen in ("conv1", "bn1", "layer1", "layer2"):
        assert not _changed(before, after, frozen), frozen  # buffers included
    for unfrozen in ("layer3", "layer4"):
        changed = _changed(before, after, unfrozen)
        assert any(k.endswith("conv1.weight") for k in changed), unfrozen
        assert not [k for k in changed if "running_" in k or "num_batches" in k]  # BN in eval mode


def test_bn_train_lets_statistics_of_unfrozen_stages_move(setup):
    cfg, model, train_ds, test_ds = setup
    finetune.unfreeze(model.backbone, 1, bn_train=True)
    before = _state(model)
    finetune.fine_tune(model, train_ds, test_ds, cfg, "cpu", epochs=1)
    after = model.backbone.state_dict()
    assert [k for k in _changed(before, after, "layer4") if "running_mean" in k]
    assert not _changed(before, after, "layer3")


def test_each_group_gets_its_learning_rate_and_the_schedule(setup):
    cfg, model, train_ds, test_ds = setup
    finetune.unfreeze(model.backbone, 2)
    opt = finetune.make_optimizer(model, cfg.lr, cfg.lr_decay, cfg.weight_decay)
    base = {g["name"]: g["base_lr"] for g in opt.param_groups}
    assert base == {"head": cfg.lr, "head (no decay)": cfg.lr, "layer4": cfg.lr * 0.5,
                    "layer4 (no decay)": cfg.lr * 0.5, "layer3": cfg.lr * 0.25, "layer3 (no decay)": cfg.lr * 0.25}
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["layer4 (no decay)"] == 0.0
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["layer4"] == cfg.weight_decay
    f = finetune.make_schedule(100)  # 10 warm-up steps, then cosine
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(10) == 1.0
    assert f(55) == pytest.approx(0.5) and f(99) < 0.001
    seen = []
    finetune.fine_tune(model, train_ds, test_ds, cfg, "cpu", epochs=2, optimizer=opt,
                       on_epoch_end=lambda row, m, o: seen.append(row["lr"]))
    # The peak of each group (reached at the end of warm-up, in epoch 1) is its configured rate.
    assert seen[0] == pytest.approx(base)
    assert all(seen[1][k] < v for k, v in base.items())  # decaying in epoch 2
    lrs = finetune.group_lrs(opt, 12)
    assert all(a / b == pytest.approx(2.0) for a, b in zip(lrs["layer4"], lrs["layer3"]))


def test_fine_tuning_without_warm_up_starts_at_the_peak_rate(setup, monkeypatch):
    """``warmup_steps=0`` (notebook 09's comparison): the first step already runs at each group's peak."""
    cfg, model, train_ds, _ = setup
    assert finetune.make_schedule(100, 0)(0) == 1.0 and finetune.make_schedule(100, 0)(50) < 1.0
    finetune.unfreeze(model.backbone, 1)
    opt = finetune.make_optimizer(model, cfg.lr, cfg.lr_decay, cfg.weight_decay)
    first = []
    real_set_lr = finetune.set_lr

    def spy(optimizer, factor):
        first.append(factor)
        real_set_lr(optimizer, factor)

    monkeypatch.setattr(finetune, "set_lr", spy)
    finetune.fine_tune(model, train_ds, None, cfg, "cpu", epochs=1, optimizer=opt, warmup_steps=0, batch_size=8)
    assert first[0] == 1.0
    first.clear()
    finetune.fine_tune(copy.deepcopy(model), train_ds, None, cfg, "cpu", epochs=1, warmup_steps=None, batch_size=8)
    assert first[0] < 1.0


@pytest.mark.parametrize("bad", [-1, 6, "some", 1.5, "2.5"])
def test_bad_unfreeze_values_are_config_errors(setup, bad):
    _, model, _, _ = setup
    with pytest.raises(ConfigError, match="unfreeze"):
        finetune.unfreeze(model.backbone, bad)


def test_unfreeze_all_trains_every_backbone_parameter_and_zero_none(setup):
    _, model, _, _ = setup
    finetune.unfreeze(model.backbone, "all")
    assert all(p.requires_grad for p in model.backbone.parameters())
    finetune.unfreeze(model.backbone, 0)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training


def test_unfrozen_stages_train_in_eval_mode_but_batchnorm_with_bn_train(setup):
    """Keras' recipe: no dropout or stochastic depth, BatchNorm frozen unless bn_train."""
    _, model, _, _ = setup
    finetune.unfreeze(model.backbone, 2)
    model.train()
    assert model.head.training and not any(m.training for m in model.backbone.modules())
    finetune.unfreeze(model.backbone, 2, bn_train=True)
    model.train()
    training = {n for n, m in model.backbone.named_modules() if m.training}
    assert training and all(n.startswith(("layer3", "layer4")) and "bn" in n or "downsample.1" in n for n in training)


def test_the_head_standardisation_follows_the_features_only_while_fine_tuning():
    from cifar_tl.models import Standardize

    s = Standardize(4)
    s.fit_stats(torch.zeros(10, 4) + torch.arange(10.0)[:, None])
    before = s.mean.clone()
    s.train()(torch.full((8, 4), 100.0) + torch.randn(8, 4))
    assert torch.equal(s.mean, before)  # momentum 0: the head on cached features keeps its statistics
    s.momentum = 0.5
    s.train()(torch.full((8, 4), 100.0) + torch.randn(8, 4))
    assert (s.mean > 40).all()
    moved = s.mean.clone()
    s.eval()(torch.zeros(8, 4))
    assert torch.equal(s.mean, moved)


def _linear_problem(scale: float):
    """Least squares with inputs of scale ``scale``: plain SGD diverges above lr ~ 1/scale**2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g) * scale
    y = x @ torch.randn(10, 1, generator=g)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]


def test_lr_finder_suggests_a_rate_inside_the_known_good_range():
    results = []
    for scale in (1.0, 10.0):
        torch.manual_seed(0)
        model = nn.Linear(10, 1)
        before = copy.deepcopy(model.state_dict())
        r = engine.lr_find(model, _linear_problem(scale), steps=120, start_lr=1e-6, end_lr=10,
                           optimizer_fn=lambda ps, lr: torch.optim.SGD(ps, lr=lr), loss_fn=nn.MSELoss())
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # put back
        results.append(r["suggestion"])
    # Inputs of scale 1: SGD on this loss is stable below lr = 1 and slow below 1e-3.
    assert 1e-2 <= results[0] <= 1.0
    # 10x larger inputs: a 100x smaller Hessian-safe rate, and the finder moves with it.
    assert 30 <= results[0] / results[1] <= 300


def test_the_valley_rule_picks_two_thirds_down_the_longest_fall():
    # Flat for 10 points, a clean fall over 30 (indices 10-39), then a climb: the longest
    # decreasing run is index 9 then 10-39 (31 points, ending at 39); as fastai counts, it starts
    # at 39 - 31 = 8, and two thirds down is 8 + int(31 / 3) + int(31 / 3 / 2) = 23.
    losses = [5.0] * 10 + [5.0 - 0.1 * i for i in range(1, 31)] + [2.0 + 0.5 * i for i in range(1, 11)]
    assert engine.valley(losses) == 23
    # A short early dip does not win over the long fall later on: 5.0 then 4.9 ... 3.0 (21 points,
    # ending at index 24), start 3, suggestion 3 + 7 + 3 = 13.
    dip = [5.0, 4.0, 4.5, 5.0, 5.0] + [5.0 - 0.1 * i for i in range(1, 21)] + [9.0]
    assert engine.valley(dip) == 13
    assert engine.valley([1.0]) == 0


@pytest.mark.parametrize("bn_train", [False, True])
def test_model_checkpoint_round_trip_and_damage(setup, tmp_path, bn_train):
    """With --bn-train the unfrozen stages' BatchNorm statistics move: model.pt must hold them."""
    cfg, model, train_ds, test_ds = setup
    fingerprint = checkpoint.backbone_fingerprint(model.backbone)
    finetune.unfreeze(model.backbone, 1, bn_train)
    stats = model.backbone.layer4[0].bn1.running_mean.clone()
    finetune.fine_tune(model, train_ds, test_ds, cfg, "cpu", epochs=1)
    assert bn_train != torch.equal(stats, model.backbone.layer4[0].bn1.running_mean)
    path = finetune.save_model(tmp_path / "model.pt", model, config=cfg, class_names=train_ds.classes,
                               backbone_fingerprint=fingerprint)
    loaded, meta = finetune.load_model_checkpoint(path)
    assert (finetune.evaluate_dataset(loaded, test_ds, cfg, "cpu").preds.tolist()
            == finetune.evaluate_dataset(model, test_ds, cfg, "cpu").preds.tolist())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert meta["unfrozen"] == ["layer4"] and not list(tmp_path.glob(".*"))
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["layer4.0.conv1.weight"][0, 0, 0, 0] += 1
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        finetune.load_model_checkpoint(tmp_path / "bad.pt")


def test_resumed_fine_tuning_is_bit_identical(setup):
    cfg, model, train_ds, test_ds = setup
    other = copy.deepcopy(model)
    finetune.unfreeze(model.backbone, 2)
    full = finetune.fine_tune(model, train_ds, test_ds, cfg, "cpu", epochs=2)
    finetune.unfreeze(other.backbone, 2)
    saved = {}
    finetune.fine_tune(other, train_ds, test_ds, cfg, "cpu", epochs=2, history=[],
                       on_epoch_end=lambda row, m, o: saved.update(
                           model=copy.deepcopy(m.state_dict()), opt=copy.deepcopy(o.state_dict()), row=row)
                       if row["epoch"] == 1 else None)
    # A fresh model from the state after epoch 1 (as a resumed run rebuilds it).
    resumed = copy.deepcopy(other)
    resumed.load_state_dict(saved["model"])
    finetune.unfreeze(resumed.backbone, 2)
    opt = finetune.make_optimizer(resumed, cfg.lr, cfg.lr_decay, cfg.weight_decay)
    opt.load_state_dict(saved["opt"])
    rest = finetune.fine_tune(resumed, train_ds, test_ds, cfg, "cpu", epochs=2, history=[saved["row"]], optimizer=opt)
    assert rest[-1]["train_loss"] == full[-1]["train_loss"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert math.isfinite(full[-1]["images_per_second"])
