"""How the frozen backbone runs here: the engine (torch, OpenVINO) and precision (fp32, bf16, fp16).

Only the frozen backbone's inference goes through this module; training, fine-tuning and every
GPU stay on torch. ``auto`` picks what measured fastest without changing what the head learns
(benchmarks/README.md, "Engines and precisions"): bf16 where the processor computes it natively,
OpenVINO on a CPU where it is installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch

from .errors import CifarTLError, ConfigError, one_line
from .openvino_engine import OpenVINORunner

log = logging.getLogger(__name__)

__all__ = ["BackboneRunner", "make_runner", "native_bf16", "resolve_engine", "resolve_precision"]

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 must beat fp32 by this factor in the probe to be chosen: native bf16 measured 2-4x here,
# emulated bf16 (AVX-512 without the bf16 instructions, AVX2) is slower than fp32.
BF16_MIN_SPEEDUP = 1.2
# A kept probe result outside this range is damage (measured 0.7-4x on the machines here).
SPEEDUP_RANGE = (0.01, 100.0)
PROBE_FILE = "precision-probe.json"
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


# --------------------------------------------------------------------------- capabilities
def cpu_model() -> str:
    """The processor's name (Linux /proc/cpuinfo, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: the x86 flags avx512_bf16 or amx_bf16 (Linux),
    FEAT_BF16 on Apple silicon (M2 and later). ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
    is not the test: it is also true where oneDNN emulates bf16 on plain AVX-512, which is slower
    than fp32. Elsewhere (Windows) it is the best hint there is, and the probe decides."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = {w for line in text.splitlines() if line.startswith("flags") for w in line.split()}
        return any(f in flags for f in _CPU_BF16_FLAGS)
    except OSError:
        pass
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return out.stdout.strip() == "1"
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def measure_bf16_speedup(rounds: int = 5) -> float:
    """fp32 time / bf16-autocast time of a channels_last 3x3 convolution (128 channels: with 64,
    oneDNN's bf16 kernels lose to fp32 even where bf16 is native) and a 512 x 512 matmul, the
    two kinds of work in a backbone: the best of ``rounds`` each, interleaved so that other jobs
    slow both alike, on one thread: the arithmetic's rate per core, which two threads waiting for
    each other's time slices on a busy machine hide (there bf16 measured 0.7x with two threads,
    1.8-2.6x with one). About 0.4-0.6 s in all."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(16, 128, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)

    def run(dtype) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            conv(x)
            a @ b
        return time.perf_counter() - t0

    best = {None: float("inf"), torch.bfloat16: float("inf")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(rounds + 2):  # 2 warm-ups: oneDNN compiles its kernels per shape and dtype
            for dtype in best:
                seconds = run(dtype)
                best[dtype] = min(best[dtype], seconds) if i >= 2 else best[dtype]
    finally:
        torch.set_num_threads(threads)
    return best[None] / best[torch.bfloat16]


def _busy() -> bool:
    """Whether other jobs compete for the cores now (1-minute load above the core count)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except (AttributeError, OSError):  # Windows has no load average
        return False


def _probe_key() -> str:
    return f"{cpu_model()} | torch {torch.__version__}"


def cpu_bf16_probe(data_root: str | Path | None = None) -> dict:
    """Whether bf16 pays on this CPU: {"native": bool, "speedup": float or None}, measured once
    per machine (processor, torch version) and kept in ``<data_root>/precision-probe.json``."""
    native = native_bf16()
    if not native:
        return {"native": False, "speedup": None}
    from .config import default_data_root  # lazy: config imports models, data

    path = Path(data_root or default_data_root()) / PROBE_FILE
    key = _probe_key()
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        known = {}
    except (OSError, ValueError) as e:
        known = None
        log.warning("precision probe %s is unreadable (%s); measuring again", path, e.__class__.__name__)
    if isinstance(known, dict) and key in known:
        if _valid_probe(known[key]):
            return known[key]
        log.warning("precision probe %s is damaged (%s); measuring again", path, one_line(repr(known[key]), 60))
    elif known is not None and not isinstance(known, dict):
        log.warning("precision probe %s is damaged (not a JSON object); measuring again", path)
    result = {"native": True, "speedup": round(measure_bf16_speedup(), 3)}
    if not _valid_probe(result):  # cannot happen with a working clock; then fp32, not kept
        return {"native": True, "speedup": 0.0}
    if result["speedup"] < BF16_MIN_SPEEDUP and _busy():
        return result  # maybe only the other jobs: not kept, so the next run measures again
    try:
        from .storage import write_json

        write_json(path, {**(known if isinstance(known, dict) else {}), key: result})
    except Exception as e:  # noqa: BLE001  an unwritable root only costs a re-measurement
        log.debug("precision probe not saved in %s: %s", path, e)
    return result


def _valid_probe(entry) -> bool:
    """Whether a kept probe result is one ``cpu_bf16_probe`` could have written."""
    if not isinstance(entry, dict) or entry.get("native") is not True:
        return False
    s = entry.get("speedup")
    return (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
            and SPEEDUP_RANGE[0] <= s <= SPEEDUP_RANGE[1])


# --------------------------------------------------------------------------- resolution
def resolve_precision(requested: str, device, data_root=None) -> tuple[str, str]:
    """The precision the frozen backbone runs in, and why: (fp32 | bf16 | fp16, reason).

    ``auto``: on CUDA bf16 where supported, else fp16. On a CPU bf16 when it is native and the
    probe (``cpu_bf16_probe``) measured it faster; fp32 otherwise. On MPS fp32: autocast there
    covers fewer operations, and nothing was measured on Apple GPUs; ask for fp16 to try it.
    An explicit fp32, bf16 or fp16 is used as asked.
    """
    if requested not in ("auto", *DTYPES):
        raise ConfigError(f"unknown precision {requested!r}; choose auto, fp32, bf16 or fp16")
    kind = torch.device(device).type
    if requested != "auto":
        return requested, "asked for"
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU supports bf16"
        return "fp16", "this GPU has no bf16; fp16 autocast"
    if kind == "mps":
        return "fp32", "MPS: reduced precision not measured there (--precision fp16 to try)"
    probe = cpu_bf16_probe(data_root)
    if not probe["native"]:
        return "fp32", "this CPU has no native bf16 (emulated bf16 is slower)"
    if probe["speedup"] < BF16_MIN_SPEEDUP:
        return "fp32", f"native bf16 measured only {probe['speedup']:.2f}x fp32 here"
    return "bf16", f"native bf16, measured {probe['speedup']:.1f}x fp32 here"


def openvino_import_error() -> str | None:
    """Why ``import openvino`` fails ("not installed", or the error of a broken installation); None
    when it imports. Any exception counts: a broken package may raise anything while importing."""
    try:
        import openvino  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name == "openvino":
            return "not installed"
        return f"fails to import ({e.__class__.__name__}: {one_line(e, 150)})"
    except Exception as e:  # noqa: BLE001
        return f"fails to import ({e.__class__.__name__}: {one_line(e, 150)})"
    return None


def openvino_available() -> bool:
    return openvino_import_error() is None


def resolve_engine(requested: str, device) -> tuple[str, str]:
    """The engine of the frozen backbone, and why: (torch | openvino, reason).

    ``auto``: OpenVINO on a CPU when it is installed (``pip install cifar-tl[openvino]``), torch
    otherwise. An explicit ``openvino`` on a GPU, or without the package, is a ConfigError.
    """
    if requested not in ("auto", "torch", "openvino"):
        raise ConfigError(f"unknown engine {requested!r}; choose auto, torch or openvino")
    cpu = torch.device(device).type == "cpu"
    if requested == "torch":
        return "torch", "asked for"
    if requested == "openvino":
        if not cpu:
            raise ConfigError(f"--engine openvino runs the backbone on the CPU only, not {device}: "
                              "use --engine torch (or auto) with a GPU")
        if not openvino_available():
            why = openvino_import_error() or "not installed"
            if why != "not installed":  # not an argument error: the installation is broken
                raise CifarTLError(f"--engine openvino: OpenVINO {why}; reinstall it (pip install "
                                   "--force-reinstall openvino) or use --engine torch")
            raise ConfigError("--engine openvino needs OpenVINO: pip install 'cifar-tl[openvino]' "
                              "(or pip install openvino)")
        return "openvino", "asked for"
    if not cpu:
        return "torch", f"the {torch.device(device).type} device runs on torch"
    if openvino_available():
        return "openvino", "OpenVINO is installed; it runs the frozen backbone faster on a CPU"
    why = openvino_import_error() or "not installed"
    if why != "not installed":
        return "torch", f"OpenVINO {why}"
    return "torch", "OpenVINO is not installed (pip install 'cifar-tl[openvino]' for faster CPU extraction)"


# --------------------------------------------------------------------------- running
class BackboneRunner:
    """The frozen backbone as a function: preprocessed float32 [B,3,S,S] -> features float32 [B,D].

    Attributes ``engine``, ``precision`` and ``reason`` say how it runs; ``channels_last`` what
    input layout it wants. Build it with ``make_runner``.
    """

    def __init__(self, backbone: torch.nn.Module, device, precision: str, reason: str = ""):
        self.backbone, self.device = backbone, torch.device(device)
        self.engine, self.precision, self.reason = "torch", precision, reason
        from .preprocess import channels_last_pays

        self.channels_last = channels_last_pays(self.device)
        # Outside inference_mode: parameters converted in it would become inference tensors.
        backbone.to(self.device).eval()
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = DTYPES[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.backbone(x).float()


# Backbones OpenVINO failed on in this process ({(image size, precision): why}): a run's training
# and test splits ask for a runner each, and the second gets torch at once, without a second notice.
_FAILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def make_runner(backbone, device, image_size: int, engine: str = "auto", precision: str = "auto",
                data_root=None) -> BackboneRunner:
    """The backbone ready to run with the resolved engine and precision (``resolve_engine``,
    ``resolve_precision``). When ``engine`` is ``auto`` and OpenVINO cannot convert or run the
    backbone (its files damaged even after rebuilding them), it runs on torch instead, with one
    notice; an explicit ``openvino`` raises the error."""
    from .config import default_data_root

    prec, why_prec = resolve_precision(precision, device, data_root)
    eng, why_eng = resolve_engine(engine, device)
    reason = f"engine {eng}: {why_eng}; precision {prec}: {why_prec}"
    name = getattr(backbone, "name", "the backbone")
    failed = _FAILED.setdefault(backbone, {})
    if eng == "openvino" and (engine != "auto" or (image_size, prec) not in failed):
        cache_dir = Path(data_root or default_data_root()) / "openvino"
        try:
            return OpenVINORunner(backbone, prec, image_size, cache_dir, reason)
        except Exception as e:  # noqa: BLE001  any conversion failure: torch still works
            why = f"{e.__class__.__name__}: {one_line(e, 150)}"
            if engine != "auto":
                raise CifarTLError(f"OpenVINO could not convert or run {name} ({why}); use --engine torch") from None
            log.warning("OpenVINO could not convert or run %s (%s); running it on torch instead", name, why)
            failed[(image_size, prec)] = why
    if eng == "openvino":
        reason = f"engine torch: OpenVINO could not convert or run {name}; precision {prec}: {why_prec}"
    return BackboneRunner(backbone, device, prec, reason)

