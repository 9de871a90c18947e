"""Caches of the frozen backbone's engines that lie: OpenVINO's converted and compiled models
damaged on disk, conversions that fail under ``--engine auto``, an OpenVINO that cannot even be
imported, and a damaged precision probe. Each ends in torch's accuracy or one clear line."""

import hashlib
import json
import os
import shutil

import pytest
import torch

from cifar_tl import engines, inference, openvino_engine
from cifar_tl.models import build_backbone

from .conftest import ROOT, cli_in_process, run_cli

pytest.importorskip("openvino")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--profile", "smoke", "--backbone", "resnet18", "--image-size", "32", "--train-size", "200",
        "--test-size", "100", "--epochs", "2", "--quiet")
# OpenVINO fp32 and torch fp32 features differ by 1e-6 (tests/test_engines.py): the same
# predictions on 100 test images, within one image. Damaged files gave 1% where torch gives 13%.
SAME_ACCURACY = 0.02


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _overwrite(path, content: bytes) -> None:
    os.chmod(path, 0o600)  # OpenVINO writes its blobs read-only
    path.write_bytes(content)


def _garble(content: bytes) -> bytes:
    """4,096 bytes of 0x7f in the middle: weights of 3.4e38, as random bytes on disk would be."""
    k = len(content) // 2
    return content[:k] + b"\x7f" * 4096 + content[k + 4096:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A head trained on torch fp32, its accuracy on torch, and OpenVINO's files for it, whole."""
    torch.set_num_threads(1)  # as the tests (one_thread): OpenVINO's compiled blob depends on it
    base = tmp_path_factory.mktemp("ovcache")
    from cifar_tl import cli

    assert cli.main(["run", *TINY, "--engine", "torch", "--precision", "fp32", "--data-root", str(base / "data"),
                     "--out", str(base / "run")]) == 0
    head = base / "run" / "head.pt"
    common = dict(precision="fp32", cache=False, data_root=str(base / "data"), progress=False)
    torch_acc = inference.evaluate_checkpoint(head, engine="torch", **common)["test_accuracy"]
    ov_acc = inference.evaluate_checkpoint(head, engine="openvino", **common)["test_accuracy"]
    assert abs(ov_acc - torch_acc) <= SAME_ACCURACY
    return head, base / "data" / "openvino", torch_acc


def _evaluate(capsys, head, root, engine="openvino"):
    code, out, err = cli_in_process(capsys, "evaluate", "--checkpoint", head, "--engine", engine,
                                    "--precision", "fp32", "--no-cache", "--quiet", "--data-root", root)
    lines = out.strip().splitlines()
    acc = float(lines[-1].split()[2].rstrip(",")) if code == 0 and lines and lines[-1].startswith("test accuracy") else None
    return code, acc, lines[:-1] if acc is not None else lines, err


def _ir(folder):
    xml = next(p for p in folder.glob("*.xml") if ".tmp." not in p.name)
    return xml, xml.with_suffix(".bin"), xml.with_suffix(".sha256.json")


def _blob(folder):
    (blob,) = (folder / "compiled").glob("*/*.blob")
    return blob


def _with_checksum(path, sums_file):
    """Damage ``path`` and record the damaged file's checksum too: only the probe can tell."""
    _overwrite(path, _garble(path.read_bytes()))
    sums = json.loads(sums_file.read_text())
    sums[path.name] = _sha(path)
    sums_file.write_text(json.dumps(sums))


# What is damaged: how, and the notice that says so (the checksums' or the probe image's).
DAMAGE = {
    "bin-garbled": (lambda f: _overwrite(_ir(f)[1], _garble(_ir(f)[1].read_bytes())),
                    ".bin does not match its checksum); converting it again"),
    "bin-truncated": (lambda f: _overwrite(_ir(f)[1], _ir(f)[1].read_bytes()[:1000]),
                      ".bin does not match its checksum); converting it again"),
    "xml-truncated": (lambda f: _overwrite(_ir(f)[0], _ir(f)[0].read_bytes()[:1000]),
                      ".xml does not match its checksum); converting it again"),
    "blob-garbled": (lambda f: _overwrite(_blob(f), _garble(_blob(f).read_bytes())),
                     ".blob does not match its checksum); compiling it again"),
    "blob-and-its-checksum": (lambda f: _with_checksum(_blob(f), _blob(f).parent / "sha256.json"),
                              "give wrong results (features off by"),
    "bin-and-its-checksum": (lambda f: _with_checksum(_ir(f)[1], _ir(f)[2]),
                             "give wrong results (features off by"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_openvino_files_are_rebuilt_with_one_notice_and_give_torchs_accuracy(
        trained, tmp_path, capsys, case):
    head, pristine, torch_acc = trained
    folder = tmp_path / "data" / "openvino"
    shutil.copytree(pristine, folder)
    weights = _sha(_ir(folder)[1])
    blob_name = _blob(folder).name
    damage, notice = DAMAGE[case]
    damage(folder)
    code, acc, notices, err = _evaluate(capsys, head, tmp_path / "data")
    assert code == 0 and not err, err
    assert abs(acc - torch_acc) <= SAME_ACCURACY, (acc, torch_acc)
    assert len(notices) == 1 and notice in notices[0], notices
    assert _sha(_ir(folder)[1]) == weights  # the converted model rebuilt (its .xml varies a little)
    assert openvino_engine._damage(_ir(folder)[0]) is None  # and whole, with its checksums
    assert _blob(folder).name == blob_name  # the same compiled model was asked for, and rebuilt
    code, acc2, notices, _ = _evaluate(capsys, head, tmp_path / "data")  # and trusted from now on
    assert code == 0 and acc2 == acc and notices == []


def test_openvino_still_wrong_after_rebuilding_falls_back_to_torch_under_auto(trained, tmp_path, capsys,
                                                                             monkeypatch):
    head, pristine, torch_acc = trained
    shutil.copytree(pristine, tmp_path / "data" / "openvino")
    monkeypatch.setattr(openvino_engine.OpenVINORunner, "_probe", lambda *a: "features off by 1 (simulated)")
    code, acc, notices, err = _evaluate(capsys, head, tmp_path / "data", "auto")
    assert code == 0 and not err and abs(acc - torch_acc) <= SAME_ACCURACY
    assert len(notices) == 2 and "converting and compiling it again" in notices[0], notices
    assert "running it on torch instead" in notices[1]
    code, acc, notices, err = _evaluate(capsys, head, tmp_path / "data", "openvino")  # asked by name
    assert code == 1 and len(err) == 1 and "use --engine torch" in err[0] and "simulated" in err[0], err


def test_run_on_a_damaged_openvino_cache_rebuilds_it_and_never_blames_the_learning_rate(tmp_path, capsys):
    args = ["run", *TINY, "--engine", "openvino", "--precision", "fp32", "--data-root", tmp_path / "data",
            "--out", tmp_path / "run"]
    code, out, err = cli_in_process(capsys, *args)
    assert code == 0, err
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"]
    folder = tmp_path / "data" / "openvino"
    DAMAGE["bin-garbled"][0](folder)
    DAMAGE["blob-garbled"][0](folder)
    shutil.rmtree(tmp_path / "data" / "features")  # features are extracted again, on those files
    code, out, err = cli_in_process(capsys, *args, "--overwrite")
    assert code == 0 and not err, err
    assert "--lr" not in out and "damaged" in out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] == first


def test_auto_falls_back_to_torch_on_the_cached_path_when_conversion_fails(tmp_path, capsys, monkeypatch):
    """The README's promise for ``--engine auto``, on the path every run takes (the feature cache),
    and for every later run too."""
    import openvino as ov

    def fail(*a, **k):
        raise RuntimeError("unsupported operation aten::foo")

    monkeypatch.setattr(ov, "convert_model", fail)
    for out in ("a", "b"):
        code, text, err = cli_in_process(capsys, "run", *TINY, "--engine", "auto", "--precision", "fp32",
                                         "--data-root", tmp_path / "data", "--out", tmp_path / out)
        assert code == 0 and not err, err
        notices = [line for line in text.splitlines() if "OpenVINO" in line and "backbone:" not in line]
        assert len(notices) == 1 and "running it on torch instead" in notices[0], text
        assert json.loads((tmp_path / out / "metrics.json").read_text())["engine"] == "torch"
    code, text, err = cli_in_process(capsys, "run", *TINY, "--engine", "openvino", "--precision", "fp32",
                                     "--data-root", tmp_path / "data", "--out", tmp_path / "c")
    assert code == 1 and len(err) == 1 and "aten::foo" in err[0] and "use --engine torch" in err[0], err


def test_an_openvino_that_fails_to_import_is_one_notice_or_one_line(tmp_path):
    fake = tmp_path / "site" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('libopenvino.so: broken installation')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "CIFAR_TL_DATA": str(tmp_path / "data")}
    common = [*TINY, "--precision", "fp32"]
    proc = run_cli("run", *common, "--engine", "auto", "--out", tmp_path / "a", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "engine torch: OpenVINO fails to import (RuntimeError: libopenvino.so" in proc.stdout, proc.stdout
    proc = run_cli("run", *common, "--engine", "openvino", "--out", tmp_path / "b", env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "fails to import (RuntimeError" in err[0], proc.stderr


# --------------------------------------------------------------------------- the precision probe
@pytest.mark.parametrize("kept", ["NaN", "\"fast\"", "null", "{}", "1e300", "{\"native\": true, \"speedup\": \"2\"}",
                                  "FILE:not json", "FILE:[1, 2]", "FILE:\"text\""])
def test_a_damaged_precision_probe_is_measured_again_with_one_notice(tmp_path, capsys, monkeypatch, kept):
    measured = []
    monkeypatch.setattr(engines, "native_bf16", lambda: True)
    monkeypatch.setattr(engines, "measure_bf16_speedup", lambda: measured.append(1) or 2.0)
    root = tmp_path / "data"
    root.mkdir()
    probe = root / engines.PROBE_FILE
    if kept.startswith("FILE:"):
        probe.write_text(kept[5:])
    else:
        entry = kept if kept.startswith("{") else f'{{"native": true, "speedup": {kept}}}'
        probe.write_text(f'{{{json.dumps(engines._probe_key())}: {entry}}}')
    code, out, err = cli_in_process(capsys, "run", *TINY, "--engine", "torch", "--precision", "auto",
                                    "--epochs", "1", "--data-root", root, "--out", tmp_path / "run")
    assert code == 0 and not err, err
    notices = [line for line in out.splitlines() if "precision probe" in line]
    assert len(notices) == 1 and "measuring again" in notices[0] and len(notices[0]) < 300, out
    assert "precision bf16: native bf16, measured 2.0x fp32 here" in out and measured == [1], out
    assert json.loads(probe.read_text())[engines._probe_key()] == {"native": True, "speedup": 2.0}


# --------------------------------------------------------------------------- compiled precision
@pytest.mark.parametrize("precision, hint", [("fp32", "f32"), ("bf16", "bf16")])
def test_openvino_compiles_in_the_precision_asked_for(tmp_path, precision, hint):
    """Tolerances alone cannot tell bf16 from fp32 (fp32 is within bf16's): ask the compiled model."""
    if precision == "bf16" and not engines.native_bf16():
        pytest.skip("OpenVINO compiles bf16 only where the CPU has it natively")
    backbone = build_backbone("resnet18", weights=None)
    runner = engines.make_runner(backbone, "cpu", 32, "openvino", precision, tmp_path)
    assert runner.engine == "openvino"
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == hint
