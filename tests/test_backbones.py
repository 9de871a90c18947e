"""Backbones from torchvision's registry: widths read, not typed; the old six unchanged; sizes,
names and stages checked."""

import re
import warnings

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from cifar_tl import backbones, models
from cifar_tl.errors import CheckpointError, ConfigError, UnknownBackbone
from cifar_tl.models import build_backbone
from cifar_tl.stages import output_module as stage_output_module

from .conftest import cli_in_process

# One (small) member of each family in torchvision's registry, run for real with random weights.
FAMILIES = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
            "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
            "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
            "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vit_b_32",
            "wide_resnet50_2"]


def _smallest_size(name: str) -> int:
    size = max(backbones.min_image_size(name), 32)
    try:
        backbones.check_image_size(name, size)
    except ConfigError:
        size = backbones.default_image_size(name)
    return size


def test_every_family_is_represented():
    families = {re.match("[a-z]+", n).group() for n in backbones.list_backbones()}
    covered = {re.match("[a-z]+", n).group() for n in FAMILIES}
    assert families <= covered, families - covered


@pytest.mark.parametrize("name", FAMILIES)
def test_width_is_read_and_equals_the_output_width(name, one_thread):
    bb = build_backbone(name, weights=None)
    size = _smallest_size(name)
    with torch.no_grad():
        out = bb(torch.randn(1, 3, size, size))
    assert out.shape == (1, bb.num_features)
    assert bb.num_features == backbones.feature_width(name)
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training
    # Stages: parameters of the extractor, in order, none shared between two stages.
    ids = [id(p) for s in bb.stages for p in s.parameters()]
    assert len(bb.stages) >= 2 and len(ids) == len(set(ids))
    assert len(bb.stages) == len(bb.stage_names)


def test_every_registry_model_has_a_width_equal_to_its_output_on_the_meta_device():
    """All of list_models(module=torchvision.models), shapes only (no memory, no compute)."""
    for name in backbones.list_backbones():
        size = _smallest_size(name)
        with torch.no_grad():
            out = backbones._meta_extractor(name)(torch.empty(2, 3, size, size, device="meta"))
        assert out.shape == (2, backbones.feature_width(name)), name


def _old_efficientnet_v2_s_features(seed: int) -> nn.Module:
    """The construction used before the registry, written out: features, avgpool, flatten."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = tvm.efficientnet_v2_s(weights=None)
    return nn.Sequential(m.features, m.avgpool, nn.Flatten(start_dim=1)).eval()


def test_efficientnet_v2_s_features_are_bit_identical_to_the_old_construction(one_thread):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(build_backbone("efficientnet_v2_s", None, seed=3)(x),
                           _old_efficientnet_v2_s_features(3)(x))


@pytest.mark.parametrize("name,width", [("efficientnet_b0", 1280), ("mobilenet_v3_large", 960),
                                        ("resnet18", 512), ("resnet50", 2048), ("convnext_tiny", 768)])
def test_the_other_old_backbones_keep_their_width_and_features(name, width, one_thread):
    """The old six: same widths, same layers (ConvNeXt keeps its LayerNorm, MobileNetV3 its 960
    pooled channels), same ImageNet weights files."""
    bb = build_backbone(name, None, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = tvm.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if name.startswith("resnet"):
            m.fc = nn.Identity()
            old = m(x)
        else:
            pre = [m.classifier[0]] if name.startswith("convnext") else []
            old = nn.Sequential(m.features, m.avgpool, *pre, nn.Flatten(1))(x)
        assert bb.num_features == width and torch.equal(bb(x), old)
    assert backbones.imagenet_weights(name).name == "IMAGENET1K_V1"


def _hub_file(tmp_path, monkeypatch, seed=7):
    """A resnet18 state dict placed where torchvision looks for its ImageNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = tvm.resnet18(weights=None)
    path = backbones.weights_file("resnet18")
    assert str(path).startswith(str(tmp_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), path)
    return path, ref


def test_imagenet_weights_load_offline_from_the_torch_hub_cache(tmp_path, monkeypatch, one_thread):
    """torchvision's real loading path, with a state dict placed where it looks for the file; its
    sha256 made to look genuine (the real file cannot be made offline), hashed once per file."""
    path, ref = _hub_file(tmp_path, monkeypatch)
    prefix = path.name.split("-")[1].split(".")[0]
    hashed = []
    monkeypatch.setattr(backbones, "weights_digest", lambda p: hashed.append(p) or prefix + "0" * 56)
    bb = build_backbone("resnet18", "imagenet")
    assert torch.equal(bb.conv1.weight, ref.conv1.weight) and hashed == [path]


@pytest.mark.parametrize("damage", ["another state dict", "truncated"])
def test_imagenet_weights_that_are_not_torchvisions_are_refused(tmp_path, monkeypatch, capsys, one_thread, damage):
    """Another resnet18 state dict (valid, other values) under the weights' file name, or a cut
    copy: its sha256 does not start with the digits in the name (torch.hub's check_hash rule)."""
    path, _ = _hub_file(tmp_path, monkeypatch)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, out, err = cli_in_process(capsys, "run", "--profile", "smoke", "--backbone", "resnet18", "--weights",
                                    "imagenet", "--image-size", "32", "--train-size", "100", "--test-size", "100",
                                    "--quiet", "--out", tmp_path / "run", "--data-root", tmp_path / "data")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {path}: damaged or replaced: its sha256 starts ") and "download" in err[0], err


def test_the_weights_hash_check_accepts_a_file_whose_name_carries_its_hash(tmp_path):
    """The same check with real hashing, on a file named as torchvision names its weights."""
    import hashlib

    data = b"weights" * 1000
    good = tmp_path / f"w-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    good.write_bytes(data)
    backbones.check_weights_hash(good)
    bad = tmp_path / "w-00000000.pth"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match="damaged or replaced"):
        backbones.check_weights_hash(bad)


def test_near_miss_name_suggests_the_closest_and_names_the_default():
    with pytest.raises(UnknownBackbone, match="efficientnet_v2_s") as e:
        backbones.check_backbone("efficientnet_v2")
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
    assert "default is efficientnet_v2_s" in str(e.value)
    with pytest.raises(UnknownBackbone):
        build_backbone("vgg99", weights=None)


def test_fixed_size_transformers_refuse_other_sizes_in_one_line():
    with pytest.raises(ConfigError, match="does not run at 256 px.*--image-size 224") as e:
        models.check_image_size("vit_b_16", 256)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="below the 224 px"):
        models.check_image_size("vit_b_16", 160)
    models.check_image_size("vit_b_16", 224)
    models.check_image_size("swin_t", 256)  # Swin pads to its windows: any size from 224 up
    with pytest.raises(ConfigError, match="below"):
        models.check_image_size("swin_t", 160)


def test_metadata_sizes_and_normalization():
    assert models.min_image_size("efficientnet_v2_s") == 33
    assert models.default_image_size("efficientnet_v2_s") == 384
    assert models.normalization("efficientnet_v2_l", None) == ((0.5,) * 3, (0.5,) * 3)
    assert models.normalization("resnet18", "imagenet")[0] == (0.485, 0.456, 0.406)
    info = models.backbone_info("resnet18")
    assert info["width"] == 512 and info["params"] == 11_689_512 and info["gflops"] == pytest.approx(1.814)
    table = models.format_backbones_table(["resnet18", "vit_b_16"])
    assert "resnet18" in table and "* " in table


@pytest.mark.parametrize("name,first,last", [
    ("resnet18", "conv1+bn1", "layer4"),
    ("efficientnet_v2_s", "features.0", "features.7"),
    ("vit_b_16", "conv_proj", "encoder.layers.encoder_layer_11+encoder.ln"),
    ("swin_t", "features.0", "features.7+norm"),
    ("convnext_tiny", "features.0", "features.7+classifier"),
    ("inception_v3", "Conv2d_1a_3x3", "Mixed_7c"),
])
def test_stages_are_the_top_level_blocks_in_order(name, first, last):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = backbones._meta_extractor(name)
    names, stages = backbones.find_stages(m, backbones._called_modules(name))
    assert names[0] == first and names[-1] == last
    assert "AuxLogits" not in " ".join(names)  # never called by the extractor's forward
    if name == "resnet18":
        assert names == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
        assert stages[1] is m.layer1


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_v2_s"])
def test_a_hook_on_each_stages_output_module_fires_for_every_stage(name):
    """Notebook 03 shows what each stage outputs: ResNet's stem stage is a list of layers that is
    never called itself, so its hook goes on the list's last layer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = backbones._meta_extractor(name)
    _, stages = backbones.find_stages(m, backbones._called_modules(name))
    seen = {}
    hooks = [stage_output_module(s).register_forward_hook(lambda mod, i, out, k=k: seen.update({k: out.shape}))
             for k, s in enumerate(stages)]
    with torch.no_grad():
        m(torch.empty(1, 3, 64, 64, device="meta"))
    for h in hooks:
        h.remove()
    assert sorted(seen) == list(range(len(stages)))
    if name == "resnet18":
        assert seen[0][1] == 64 and seen[4][1] == 512
