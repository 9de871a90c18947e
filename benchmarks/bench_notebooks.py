"""Wall time of each notebook on a profile's sizes, with generated images (issue 16, item 1).

    python benchmarks/bench_notebooks.py                      # every notebook, the cpu profile
    python benchmarks/bench_notebooks.py 09_fine_tuning       # one notebook
    python benchmarks/bench_notebooks.py --profile smoke      # what CI runs

CIFAR-100 and the ImageNet weights cannot be downloaded here, and the timing does not depend on the
pixels or the weights' values: each notebook runs as a student would run it (every cell, in order,
in a fresh kernel, the profile from ``CIFAR_TL_PROFILE``), except that one cell placed right after
its parameters cell makes ``cifar_tl.notebook_config`` return the profile's sizes with
``source="synthetic"`` and stand-in weights of the same backbone. The notebooks share one fresh
data folder, so the first that needs features extracts them and the later ones read the cache,
as in a class; the table says which notebook paid the first extraction.

Stand-in weights (``--weights``):
- ``random`` (the default, for timing): torchvision's initialisation. OpenVINO converts and runs
  them as it would ImageNet's, so the ``auto`` engine takes the path a student's CPU takes.
- ``calibrated``: the same random weights with their BatchNorm statistics set by one pass of
  generated images in training mode, loaded from a file as any ``weights=FILE`` is. Their
  features differ between images at the size pretrained features have (random weights' pooled
  features are tiny, DESIGN.md's measured facts): for checks of numerics, such as 08's
  comparison of the cache with the per-image path in 16-bit. Not for timing: OpenVINO's probe
  (a noise image, bf16 against torch fp32) finds their features off by 0.29 of the largest and
  refuses the conversion, so ``auto`` runs them on torch. A third of their BatchNorm channels
  calibrate to a variance under the layer's eps (1e-3 for EfficientNetV2-S): what the generated
  images barely move, the noise image moves far, and bf16 rounding with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SYNTHETIC = '''import cifar_tl as _cifar_tl  # inserted by benchmarks/bench_notebooks.py
_notebook_config = _cifar_tl.notebook_config


def _generated(profile=None, **params):
    """The profile's sizes on generated images and stand-in weights: the same arithmetic."""
    return _notebook_config(profile, **params).replace(source="synthetic", weights={weights!r})


_cifar_tl.notebook_config = _generated'''


def calibrated_weights(profile: str, folder: Path, images: int = 64, seed: int = 0) -> Path:
    """A state dict of the profile's backbone: random weights (``seed``), BatchNorm statistics set
    by one pass of ``images`` generated images at the profile's size in training mode."""
    import torch
    from torch import nn

    from cifar_tl import backbones, synthetic
    from cifar_tl.config import Config

    cfg = Config.for_profile(profile)
    model = backbones._build_classifier(cfg.backbone, None, seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches of the pass
    pixels, _ = synthetic.make_images(-(-images // 100), seed, size=cfg.image_size)  # 100 classes
    x = torch.from_numpy(pixels[:images]).permute(0, 3, 1, 2).float().div(255)
    mean, std = backbones.normalization(cfg.backbone)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model.train()
    with torch.no_grad():
        for batch in x.split(16):
            model(batch)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.backbone}-{cfg.image_size}px-calibrated-random.pt"
    torch.save(model.state_dict(), path)
    return path


def with_generated_images(nb, weights: str | None):
    """The notebook with the SYNTHETIC cell inserted after its parameters cell (``profile = ...``)."""
    import nbformat

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.lstrip().startswith("profile = "):
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell(SYNTHETIC.replace("{weights!r}", repr(weights))))
            return nb
    raise SystemExit("no parameters cell (profile = ...) found")


def run(path: Path, env: dict, timeout: int, keep: Path | None = None, weights: str | None = None) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = with_generated_images(nbformat.read(path, as_version=4), weights)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - t0
        if keep is not None:  # the executed notebook, to read its printed figures
            keep.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, keep / path.name)
        return seconds
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", help="names like 09_fine_tuning (default: all, in order)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data", help="a data folder to reuse (default: a fresh one)")
    p.add_argument("--timeout", type=int, default=3600, help="per cell, seconds")
    p.add_argument("--keep", type=Path, help="a folder for the executed notebooks")
    p.add_argument("--weights", choices=("random", "calibrated"), default="random",
                   help="stand-in weights: random (default, for timing) or random with calibrated "
                        "BatchNorm statistics (for numerics; see above)")
    a = p.parse_args()
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.notebooks:
        paths = [ROOT / "notebooks" / (n if n.endswith(".ipynb") else f"{n}.ipynb") for n in a.notebooks]
    data = a.data or tempfile.mkdtemp(prefix="cifar_tl_bench_nb_")
    env = {"CIFAR_TL_PROFILE": a.profile, "CIFAR_TL_WIDGETS": "static", "CIFAR_TL_DATA": data}
    weights = None
    if a.weights == "calibrated":
        t0 = time.perf_counter()
        weights = str(calibrated_weights(a.profile, Path(data) / "stand-in-weights"))
        print(f"calibrated stand-in weights in {time.perf_counter() - t0:.1f} s: {weights}")
    print(f"profile {a.profile}, generated images, {a.weights} weights; data {data}; {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]}")
    rows = []
    for path in paths:
        load, t0 = os.getloadavg()[0], time.perf_counter()
        try:
            seconds, failed = run(path, env, a.timeout, a.keep, weights), ""
        except Exception as e:  # a cell that fails on these sizes: say which, and go on
            seconds, failed = time.perf_counter() - t0, f"  FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
        rows.append((path.stem, seconds, load, os.getloadavg()[0]))
        print(f"{path.stem:28s} {seconds:8.1f} s  (load {load:.1f} -> {os.getloadavg()[0]:.1f}){failed}", flush=True)
    print(json.dumps({r[0]: round(r[1], 1) for r in rows}))


if __name__ == "__main__":
    main()
