"""The model: registry widths, shapes, a frozen backbone that stays frozen, a head that learns."""

import pytest
import torch

from cifar_tl import data, engine, models
from cifar_tl.config import Config
from cifar_tl.errors import ConfigError
from cifar_tl.models import MLPHead, TransferModel, build_backbone

# The pooled widths of the six original backbones; build_backbone must read them.
EXPECTED_WIDTH = {"efficientnet_v2_s": 1280, "efficientnet_b0": 1280, "mobilenet_v3_large": 960,
                  "resnet18": 512, "resnet50": 2048, "convnext_tiny": 768}


@pytest.mark.parametrize("name", list(EXPECTED_WIDTH))
def test_backbone_width_is_read_and_matches_output(name):
    bb = build_backbone(name, weights=None)
    assert bb.num_features == EXPECTED_WIDTH[name]
    size = models.min_image_size(name)
    with torch.no_grad():
        out = bb(torch.randn(2, 3, size, size))
    assert out.shape == (2, bb.num_features)
    assert not any(p.requires_grad for p in bb.parameters())
    assert not bb.training


def test_shapes_through_the_model():
    model = TransferModel.from_config(Config(weights=None, backbone="efficientnet_v2_s"), num_classes=100)
    x = torch.randn(2, 3, 64, 64)
    assert model.features(x).shape == (2, 1280)
    assert model(x).shape == (2, 100)
    head = model.head
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [256, 256, 100]


def test_head_is_sized_from_width_and_classes():
    head = MLPHead(512, 7, hidden=(64,))
    assert head(torch.randn(3, 512)).shape == (3, 7)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean vgg19"):
        build_backbone("vgg99", weights=None)


def test_backbone_state_is_bit_identical_after_training(tiny_cfg):
    """The tutorial's bug 4: requires_grad_(False) does not freeze BatchNorm running statistics."""
    torch.manual_seed(0)
    model = TransferModel.from_config(tiny_cfg, num_classes=100)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert any("running_mean" in k for k in before), "the test needs BatchNorm buffers"
    train_ds = data.build_datasets(tiny_cfg).train
    loader = data.make_loader(train_ds, 16, train=True)
    opt = engine.make_optimizer(model)
    model.train()  # the call that would update BatchNorm statistics
    assert not model.backbone.training
    engine.train_one_epoch(model, loader, opt, torch.nn.CrossEntropyLoss(), "cpu", progress=False)
    after = model.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"backbone {k} changed during training"


def test_a_plain_train_call_would_move_batchnorm_statistics():
    """The counterfactual that makes the test above meaningful."""
    bb = build_backbone("resnet18", weights=None)
    before = {k: v.clone() for k, v in bb.state_dict().items() if "running_mean" in k}
    bb.train()
    with torch.no_grad():
        bb(torch.randn(4, 3, 32, 32))
    assert any(not torch.equal(v, bb.state_dict()[k]) for k, v in before.items())


def test_every_head_parameter_gets_a_gradient(tiny_cfg):
    model = TransferModel.from_config(tiny_cfg, num_classes=100)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.backbone.parameters())


def test_head_overfits_one_batch():
    torch.manual_seed(0)
    head = MLPHead(64, 10, standardize=True)
    x, y = torch.randn(16, 64), torch.arange(16) % 10
    head.standardizer.fit_stats(x)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert (head(x).argmax(1) == y).all()


def test_standardize_makes_near_constant_features_usable():
    """Random backbones give features that differ across images by ~1e-6 (DESIGN.md)."""
    base = torch.rand(1, 32)
    feats = base + 3e-6 * torch.randn(100, 32)
    head = MLPHead(32, 2, standardize=True)
    head.standardizer.fit_stats(feats)
    z = head.standardizer(feats)
    assert torch.allclose(z.mean(0), torch.zeros(32), atol=0.05)  # float32 resolves ~1e-7 of 0.5
    assert torch.allclose(z.std(0), torch.ones(32), atol=0.1)


def test_image_size_below_backbone_minimum_is_refused():
    with pytest.raises(ConfigError, match="below"):
        models.check_image_size("efficientnet_v2_s", 16)
