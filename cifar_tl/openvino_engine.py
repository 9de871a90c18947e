"""The OpenVINO engine: the backbone converted and compiled, files checked by checksum, output against torch's."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import torch

from .errors import one_line

log = logging.getLogger(__name__)

OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# OpenVINO's output on a probe image against torch fp32, as a fraction of the largest feature:
# measured at most 1.6e-6 in fp32 and 2.8% in bf16 (tests/test_engines.py); a damaged model file
# is off by orders of magnitude, or NaN.
PROBE_TOLERANCE = {"fp32": 1e-3, "bf16": 0.25, "fp16": 0.25}

SUMS = "sha256.json"  # {file name: sha256} of a compiled folder; NAME.sha256.json beside an IR


class OpenVINORunner:
    """The backbone converted to OpenVINO and compiled for the CPU in ``precision``; input and
    output stay on the CPU. The converted model is kept on disk (``cache_dir``) per backbone
    fingerprint, input size and OpenVINO version, the compiled one in ``cache_dir/compiled``, each
    with checksums checked before use; its output on a probe image must match torch's. When it does
    not, both are rebuilt once (one notice); if it still does not, RuntimeError."""

    def __init__(self, backbone, precision: str, image_size: int, cache_dir, reason: str = ""):
        import openvino as ov

        self.backbone, self.device, self.precision, self.reason = backbone, torch.device("cpu"), precision, reason
        self.engine, self.channels_last = "openvino", False  # OpenVINO takes dense NCHW arrays
        core = ov.Core()
        for attempt in (1, 2):
            xml = converted_model(backbone, image_size, cache_dir)
            folder = compiled_folder(cache_dir, xml.stem, OV_HINTS[precision])
            try:
                config = {"INFERENCE_PRECISION_HINT": OV_HINTS[precision],  # its default is bf16 where native
                          "INFERENCE_NUM_THREADS": torch.get_num_threads(), "CACHE_DIR": str(folder)}
                self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
                record_compiled(folder)
                problem = self._probe(backbone, image_size)
            except Exception as e:  # noqa: BLE001  a file that passed its checksum and still fails
                problem = f"{e.__class__.__name__}: {one_line(e, 150)}"
            if problem is None:
                return
            if attempt == 1:
                log.warning("OpenVINO's files for %s give wrong results (%s); converting and compiling it "
                            "again", getattr(backbone, "name", "the backbone"), problem)
                discard(xml, folder)
        raise RuntimeError(f"{problem}, even after converting it again")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(x.detach().cpu().contiguous().numpy())[0]
        return torch.from_numpy(out.copy())

    def _probe(self, backbone, image_size: int) -> str | None:
        """Why the compiled model's features of one noise image are not torch fp32's (finite, and
        within ``PROBE_TOLERANCE`` of the largest feature); None when they are."""
        x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ref = backbone(x).float()
        got = self(x)
        if got.shape != ref.shape or not got.isfinite().all():
            return "features not finite" if got.shape == ref.shape else f"features of shape {tuple(got.shape)}"
        err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        if err > PROBE_TOLERANCE[self.precision]:
            return f"features off by {err:.2g} of the largest on a probe image"
        return None


# --------------------------------------------------------------------------- files
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_sums(path: Path) -> dict:
    """The checksums recorded in ``path``; {} when it is missing or not such a record."""
    try:
        sums = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())
    return sums if ok else {}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.name != SUMS] if folder.is_dir() else []


def _remove(paths) -> None:
    for p in paths:
        try:
            p.chmod(0o600)  # OpenVINO writes its blobs read-only (Windows refuses to delete those)
            p.unlink()
        except OSError:
            pass


def model_name(backbone, image_size: int) -> str:
    """backbone-SIZEpx-FINGERPRINT-ovVERSION: one converted model per weights, size and OpenVINO."""
    import openvino as ov

    from .checkpoint import backbone_fingerprint

    version = ov.get_version().split("-")[0]
    return f"{getattr(backbone, 'name', 'backbone')}-{image_size}px-{backbone_fingerprint(backbone)[:16]}-ov{version}"


def _ir_files(xml: Path) -> tuple[Path, Path, Path]:
    return xml, xml.with_suffix(".bin"), xml.with_suffix(".sha256.json")


def _damage(xml: Path) -> str | None:
    """Why the converted model at ``xml`` cannot be trusted ("" when it is simply not there yet:
    never converted, or a conversion that died before writing its checksums); None when it is whole."""
    xml, bin_, sums_file = _ir_files(xml)
    if not sums_file.exists():
        return ""
    sums = _read_sums(sums_file)
    for p in (xml, bin_):
        if not p.is_file():
            return f"{p.name} is missing"
        if sums.get(p.name) != sha256(p):
            return f"{p.name} does not match its checksum"
    return None


def converted_model(backbone, image_size: int, cache_dir) -> Path:
    """The backbone as OpenVINO IR (.xml + .bin), converted once and saved with the sha256 of both
    files (NAME.sha256.json, written last); its .xml path. Files that do not match their checksums
    (damaged on disk, truncated, edited) are converted again, with one notice."""
    xml = Path(cache_dir) / f"{model_name(backbone, image_size)}.xml"
    damage = _damage(xml)
    if damage is None:
        return xml
    if damage:
        log.warning("OpenVINO's converted model %s is damaged (%s); converting it again", xml.with_suffix(""), damage)
    convert(backbone, image_size, xml)
    return xml


def convert(backbone, image_size: int, xml: Path) -> None:
    import openvino as ov

    from .storage import write_json

    xml, bin_, sums_file = _ir_files(xml)
    sums_file.unlink(missing_ok=True)  # first: a crash below leaves no checksums, so no trusted pair
    xml.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, image_size, image_size)
    backbone = backbone.cpu().eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notices, inside convert_model
        model = ov.convert_model(backbone, example_input=example,
                                 input=ov.PartialShape([-1, 3, image_size, image_size]))
    tmp = xml.with_name(f"{xml.stem}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # keep fp32 weights: precision is compile's
    sums = {xml.name: sha256(tmp), bin_.name: sha256(tmp.with_suffix(".bin"))}
    tmp.with_suffix(".bin").replace(bin_)
    tmp.replace(xml)
    write_json(sums_file, sums)  # last: its presence means the pair is whole


def compiled_folder(cache_dir, name: str, hint: str) -> Path:
    """OpenVINO's CACHE_DIR for one converted model and precision: every blob in it matches the
    checksum ``record_compiled`` wrote after compiling it. A blob that does not (damaged on disk,
    or left by a compilation that died) is removed with the rest of the folder, so that OpenVINO
    compiles afresh; a damaged one with one notice."""
    folder = Path(cache_dir) / "compiled" / f"{name}-{hint}"
    _remove(_files(folder.parent))  # blobs of the earlier layout, kept unchecked in compiled/
    sums = _read_sums(folder / SUMS)
    bad = [p for p in _files(folder) if sums.get(p.name) != sha256(p)]
    if bad:
        if any(p.name in sums for p in bad):
            log.warning("OpenVINO's compiled model %s is damaged (%s does not match its checksum); "
                        "compiling it again", folder, bad[0].name)
        _remove([*_files(folder), folder / SUMS])
    return folder


def record_compiled(folder: Path) -> None:
    """Write the checksums of the blobs OpenVINO left in ``folder`` (those already recorded were
    checked by ``compiled_folder``). An unwritable folder only costs a compilation next time."""
    from .storage import write_json

    known = _read_sums(folder / SUMS)
    sums = {p.name: known.get(p.name) or sha256(p) for p in _files(folder)}
    if sums and sums != known:
        try:
            write_json(folder / SUMS, sums)
        except Exception as e:  # noqa: BLE001
            log.debug("checksums of %s not saved: %s", folder, e)


def discard(xml: Path, folder: Path) -> None:
    """Remove a converted model and its compiled folder (both rebuilt at the next use)."""
    _remove([*_ir_files(xml)[::-1], *_files(folder), folder / SUMS])  # checksums first
