"""Config owns every option: roles, one validate(), one diff(), the one reading of `weights`."""

import ast
import dataclasses
import logging
from pathlib import Path

import pytest

from cifar_tl import config
from cifar_tl.config import ROLES, Config, epoch_seed, normalize_weights
from cifar_tl.errors import ConfigError

PACKAGE = Path(config.__file__).parent


def test_every_field_has_a_role():
    for f in dataclasses.fields(Config):
        assert f.metadata["role"] in (*ROLES, "profile"), f.name
    assert set(Config.fields(*ROLES)) | {"profile"} == set(Config.fields())


def test_resumable_is_compute_machine_and_epochs():
    assert set(Config.resumable()) == set(Config.fields("compute", "machine")) | {"epochs"}
    assert {"precision", "engine"} <= set(Config.fields("compute"))
    assert "lr" not in Config.resumable() and "backbone" not in Config.resumable()


def test_diff_names_exactly_the_changed_fields_of_the_roles_asked():
    a = Config.for_profile("smoke")
    b = a.replace(image_size=48, lr=0.01, device="cpu")
    assert a.diff(b) == {"image_size": (32, 48), "lr": (1e-3, 0.01), "device": ("auto", "cpu")}
    assert a.diff(b, roles=("model",)) == {"image_size": (32, 48)}
    assert a.diff(b, ignore=Config.resumable()) == {"image_size": (32, 48), "lr": (1e-3, 0.01)}
    assert a.diff(a.replace(hidden=[256, 256])) == {}  # a list and a tuple of the same widths agree


def test_building_a_config_prints_nothing_and_auto_says_why_in_a_notice(capsys, caplog, monkeypatch):
    library = logging.getLogger("cifar_tl")  # as a program that never called enable_notices()
    monkeypatch.setattr(library, "handlers", [])
    monkeypatch.setattr(library, "propagate", True)
    with caplog.at_level(logging.INFO, logger="cifar_tl"):
        cfg = Config.for_profile("auto")
    assert capsys.readouterr().out == ""
    assert any("profile: auto ->" in r.getMessage() for r in caplog.records)
    assert cfg.profile in ("full", "cpu")


@pytest.mark.parametrize("change, needle", [
    (dict(epochs=0), "epochs"),
    (dict(batch_size=-1), "batch-size"),
    (dict(image_size=100_000), "4096"),
    (dict(image_size=True), "image-size"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr=1e-3, lr_decay=2.0), "lr-decay"),
    (dict(weight_decay=-1.0), "weight-decay"),
    (dict(seed=2**40), "seed"),
    (dict(seed=-1), "seed"),
    (dict(hidden=(0,)), "hidden"),
    (dict(train_size=0), "train-size"),
    (dict(device="tpu"), "device"),
    (dict(precision="int4"), "precision"),
    (dict(engine="tensorrt"), "engine"),
    (dict(unfreeze=-2), "unfreeze"),
    (dict(unfreeze="some"), "unfreeze"),
    (dict(backbone="resnet18", unfreeze=9), "resnet18 has 5 stages"),
    (dict(source="mnist"), "source"),
    (dict(backbone="efficientnet_v2"), "efficientnet_v2_s"),
    (dict(standardize="yes"), "standardize"),
])
def test_validate_refuses_each_bad_value_in_one_line(change, needle):
    cfg = Config.for_profile("smoke").replace(**change)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_profiles_validate():
    for name in ("full", "cpu", "smoke"):
        assert Config.for_profile(name).validate().profile == name


def test_weights_are_read_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_weights(None) is None and normalize_weights("None") is None
    assert normalize_weights("random") is None and normalize_weights("ImageNet") == "imagenet"
    assert normalize_weights("r18.pth") == str(tmp_path / "r18.pth")  # absolute: works from anywhere
    assert Config(weights="none").weights is None
    assert Config().replace(weights="r18.pth").weights == str(tmp_path / "r18.pth")


def test_from_dict_refuses_what_is_not_a_config():
    with pytest.raises(ConfigError):
        Config.from_dict(["not", "a", "dict"])
    with pytest.raises(ConfigError):
        Config().replace(no_such_option=1)
    cfg = Config.from_dict({**Config().to_dict(), "an_option_of_a_newer_version": 1})
    assert cfg == Config()


def test_epoch_seed_depends_on_seed_and_epoch():
    seeds = {epoch_seed(s, e) for s in range(5) for e in range(20)}
    assert len(seeds) == 100


def test_cpu_trades_come_from_the_profile():
    cpu = Config.for_profile("cpu")
    assert f"{cpu.image_size} px" in config.cpu_trades() and f"{cpu.train_size:,}" in config.cpu_trades()


# --------------------------------------------------------------------------- one home per concept
def _imports(module: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add((node.module or "").lstrip("."))
            names.update(a.name for a in node.names if node.level)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_inference_does_not_import_pipeline():
    assert "pipeline" not in _imports(PACKAGE / "inference.py")


def test_no_module_but_config_lists_config_field_names():
    """A tuple, list or set of two or more option names outside config.py is a second home for
    knowledge about options (what a resume may change, what a checkpoint must agree on ...)."""
    names = set(Config.fields())
    modules = {m.stem for m in PACKAGE.glob("*.py")}  # a list of modules is not about options
    found = []
    for module in sorted(PACKAGE.glob("*.py")):
        if module.name == "config.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if len(set(words) & names) >= 2 and not set(words) <= modules:
                    found.append(f"{module.name}:{node.lineno}: {words}")
    assert not found, found


def test_say_setup_names_the_profile_data_backbone_weights_size_and_device_in_both_languages(capsys):
    from cifar_tl.parameters import say_setup

    say_setup(Config.for_profile("smoke").replace(weights=None), "cpu")
    en, zh = capsys.readouterr().out.splitlines()
    assert en == "profile smoke: data synthetic, backbone resnet18 (random weights), 32 px, device cpu"
    assert zh == "    预设配置 smoke：数据 synthetic，主干网络 resnet18（权重：随机），32 px，设备 cpu"
