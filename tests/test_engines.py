"""The frozen backbone's engines and precisions: same features within a stated tolerance, same
accuracy within a few points, and ``auto`` choosing as documented (capabilities monkeypatched)."""

import logging

import pytest
import torch

from cifar_tl import engine, engines, features
from cifar_tl.config import Config
from cifar_tl.errors import CifarTLError, ConfigError
from cifar_tl.models import MLPHead, build_backbone
from cifar_tl.synthetic import SyntheticCIFAR

COMBOS = [("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]
# Tolerances against torch fp32: the largest difference over the largest feature, and the
# difference in units of each feature's spread across images (what the standardised head sees),
# its maximum for fp32 and its root mean square for bf16 (single elements can round far). Measured
# on the 2-core AMD EPYC (native bf16), random backbones at 48-64 px (resnet18, efficientnet_b0,
# efficientnet_v2_s): OpenVINO fp32 at most 1.6e-6 of the largest and 1e-4 of the spread
# (summation order only); bf16 (8 mantissa bits) 0.5-2.8% of the largest and 0.014-0.037 of the
# spread (RMS), for torch autocast and OpenVINO alike. A broken engine (wrong input layout, a
# missing normalisation) is off by about 1 spread.
TOLERANCE = {"fp32": dict(largest=1e-5, spread_max=1e-3), "bf16": dict(largest=5e-2, spread_rms=0.1)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", weights=None)
    train = SyntheticCIFAR(train=True, n_per_class=5, seed=0)
    test = SyntheticCIFAR(train=False, n_per_class=3, seed=0)
    root = tmp_path_factory.mktemp("engines")
    return backbone, train, test, root


def _features(setup, engine_name, precision, ds=None, views=features.VIEWS_TEST):
    backbone, train, _, root = setup
    cfg = Config(backbone="resnet18", weights=None, image_size=48, progress=False,
                 engine=engine_name, precision=precision, data_root=str(root))
    return features.cached_features(cfg, ds or train, backbone, "cpu", views, use_cache=False)


@pytest.mark.parametrize("engine_name, precision", COMBOS)
def test_each_engine_and_precision_gives_the_features_of_torch_fp32(setup, engine_name, precision):
    ref, _, _ = _features(setup, "torch", "fp32")
    got, _, info = _features(setup, engine_name, precision)
    assert (info["engine"], info["precision"]) == (engine_name, precision)
    diff = (got - ref).abs()
    z = diff / ref.std(0).clamp_min(1e-4 * ref.std(0).max())  # as models.Standardize
    tol = TOLERANCE[precision]
    assert diff.max() <= tol["largest"] * ref.abs().max(), f"{diff.max() / ref.abs().max():.3g} of the largest"
    if "spread_max" in tol:
        assert z.max() <= tol["spread_max"], f"{z.max():.3g} of the spread"
    else:
        assert z.pow(2).mean().sqrt() <= tol["spread_rms"], f"{z.pow(2).mean().sqrt():.3g} of the spread"


def _accuracy(train_f, train_y, test_f, test_y, seed=0) -> float:
    torch.manual_seed(seed)
    head = MLPHead(train_f.shape[-1], 100, standardize=True)
    head.standardizer.fit_stats(train_f)
    loader = features.FeatureLoader(train_f, train_y, 32, train=True, seed=seed)
    with engine.head_threads("cpu"):
        engine.fit(head, loader, epochs=15, progress=False, seed=seed)
    return engine.evaluate(head, features.FeatureLoader(test_f, test_y, 256, train=False), "cpu",
                           progress=False).accuracy


def _accuracy_with(setup, engine_name, precision) -> float:
    tr_f, tr_y, _ = _features(setup, engine_name, precision, views=features.VIEWS_TRAIN)
    te_f, te_y, _ = _features(setup, engine_name, precision, ds=setup[2])
    return _accuracy(tr_f, tr_y, te_f, te_y)


@pytest.fixture(scope="module")
def fp32_accuracy(setup):
    return _accuracy_with(setup, "torch", "fp32")


@pytest.mark.parametrize("engine_name, precision", COMBOS)
def test_a_head_on_each_engines_features_learns_as_well_as_on_torch_fp32(setup, fp32_accuracy,
                                                                        engine_name, precision):
    """Synthetic set, 5 training images per class, random resnet18 at 48 px, 15 epochs: 56%
    (chance 1%) on the easier synthetic set before issue 15. Measured then: 55.7% on torch fp32,
    57.3 / 57.0 / 56.0% on torch bf16, OpenVINO fp32 and OpenVINO bf16. Even OpenVINO fp32, whose
    features differ by 1e-6, moves the result 1.3 points (training amplifies any difference), so 8
    points leaves room for other CPUs. The harder set (a texture window, clutter) brings a random
    backbone to about 20%; a head on broken features falls to chance, 1%."""
    acc = _accuracy_with(setup, engine_name, precision)
    assert min(acc, fp32_accuracy) > 0.1, (acc, fp32_accuracy)
    assert abs(acc - fp32_accuracy) <= 0.08, (acc, fp32_accuracy)


# --------------------------------------------------------------------------- auto
@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A pretend CPU: native bf16 or not, and what the probe measures (counted)."""
    state = {"native": True, "speedup": 2.0, "measured": 0, "openvino": True}

    def measure():
        state["measured"] += 1
        return state["speedup"]

    monkeypatch.setattr(engines, "native_bf16", lambda: state["native"])
    monkeypatch.setattr(engines, "measure_bf16_speedup", measure)
    monkeypatch.setattr(engines, "openvino_available", lambda: state["openvino"])
    state["root"] = tmp_path
    return state


def test_auto_precision_on_a_cpu_is_bf16_only_where_native_and_measured_faster(machine, monkeypatch):
    root = machine["root"]
    assert engines.resolve_precision("auto", "cpu", root)[0] == "bf16"
    machine["speedup"] = 0.5  # cached: the same machine is not measured again
    assert engines.resolve_precision("auto", "cpu", root)[0] == "bf16"
    assert machine["measured"] == 1
    monkeypatch.setattr(engines, "cpu_model", lambda: "Another CPU")  # another machine: measured
    precision, reason = engines.resolve_precision("auto", "cpu", root)
    assert precision == "fp32" and "0.50x" in reason and machine["measured"] == 2
    monkeypatch.setattr(engines, "_busy", lambda: True)  # a negative verdict on a busy machine ...
    monkeypatch.setattr(engines, "cpu_model", lambda: "A third CPU")
    assert engines.resolve_precision("auto", "cpu", root)[0] == "fp32" and machine["measured"] == 3
    machine["speedup"] = 2.0  # ... is not kept: measured again
    assert engines.resolve_precision("auto", "cpu", root)[0] == "bf16" and machine["measured"] == 4
    machine["native"] = False  # emulated bf16: fp32, without measuring
    precision, reason = engines.resolve_precision("auto", "cpu", tmp := root / "other")
    assert precision == "fp32" and "no native bf16" in reason and machine["measured"] == 4
    assert not (tmp / engines.PROBE_FILE).exists()


def test_auto_precision_on_gpus_and_explicit_choices(machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert engines.resolve_precision("auto", "cuda")[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert engines.resolve_precision("auto", "cuda")[0] == "fp16"
    assert engines.resolve_precision("auto", "mps")[0] == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert engines.resolve_precision(p, "cpu", machine["root"]) == (p, "asked for")
    assert machine["measured"] == 0
    with pytest.raises(ConfigError):
        engines.resolve_precision("fp8", "cpu")


def test_auto_engine_is_openvino_on_a_cpu_where_installed(machine):
    assert engines.resolve_engine("auto", "cpu")[0] == "openvino"
    assert engines.resolve_engine("auto", "cuda")[0] == "torch"
    assert engines.resolve_engine("torch", "cpu")[0] == "torch"
    with pytest.raises(ConfigError, match="CPU only"):
        engines.resolve_engine("openvino", "cuda")
    machine["openvino"] = False
    assert engines.resolve_engine("auto", "cpu")[0] == "torch"
    with pytest.raises(ConfigError, match="pip install"):
        engines.resolve_engine("openvino", "cpu")


def test_auto_falls_back_to_torch_with_one_notice_when_conversion_fails(setup, monkeypatch, caplog, tmp_path):
    backbone = setup[0]

    def fail(*a, **k):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(engines, "OpenVINORunner", fail)
    with caplog.at_level(logging.WARNING, logger="cifar_tl.engines"):
        runner = engines.make_runner(backbone, "cpu", 48, "auto", "fp32", tmp_path)
    assert runner.engine == "torch" and "could not convert" in runner.reason
    assert len(caplog.records) == 1 and "running it on torch" in caplog.records[0].getMessage()
    with pytest.raises(CifarTLError, match="use --engine torch") as e:  # asked for by name: no fallback
        engines.make_runner(backbone, "cpu", 48, "openvino", "fp32", tmp_path)
    assert "\n" not in str(e.value)


def test_the_converted_model_is_kept_on_disk_per_backbone_and_size(setup, monkeypatch, tmp_path):
    import openvino as ov

    backbone = setup[0]
    engines.make_runner(backbone, "cpu", 48, "openvino", "fp32", tmp_path)
    files = sorted(p.name for p in (tmp_path / "openvino").glob("*.xml"))
    assert len(files) == 1 and "resnet18-48px" in files[0]
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("converted again"))
    x = torch.randn(2, 3, 48, 48)
    a = engines.make_runner(backbone, "cpu", 48, "openvino", "fp32", tmp_path)(x)
    b = engines.make_runner(backbone, "cpu", 48, "openvino", "bf16", tmp_path)(x)  # same IR
    assert a.shape == b.shape == (2, backbone.num_features)
    monkeypatch.undo()
    other = build_backbone("resnet18", weights=None, seed=1)  # other weights: another model file
    engines.make_runner(other, "cpu", 48, "openvino", "fp32", tmp_path)
    engines.make_runner(backbone, "cpu", 64, "openvino", "fp32", tmp_path)  # another size
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 3
