"""Wall time of each notebook on a profile's sizes, with generated images (issue 16, item 1).

    python benchmarks/bench_notebooks.py                      # every notebook, the cpu profile
    python benchmarks/bench_notebooks.py 09_fine_tuning       # one notebook
    python benchmarks/bench_notebooks.py --profile smoke      # what CI runs

CIFAR-100 and the ImageNet weights cannot be downloaded here, and the timing does not depend on the
pixels or the weights' values: each notebook runs as a student would run it (every cell, in order,
in a fresh kernel, the profile from ``CIFAR_TL_PROFILE``), except that one cell placed right after
its parameters cell makes ``cifar_tl.notebook_config`` return the profile's sizes with
``source="synthetic"`` and random weights of the same backbone. The notebooks share one fresh
data folder, so the first that needs features extracts them and the later ones read the cache,
as in a class; the table says which notebook paid the first extraction.
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
    """The profile's sizes on generated images and random weights: the same arithmetic."""
    return _notebook_config(profile, **params).replace(source="synthetic", weights=None)


_cifar_tl.notebook_config = _generated'''


def with_generated_images(nb):
    """The notebook with the SYNTHETIC cell inserted after its parameters cell (``profile = ...``)."""
    import nbformat

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.lstrip().startswith("profile = "):
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell(SYNTHETIC))
            return nb
    raise SystemExit("no parameters cell (profile = ...) found")


def run(path: Path, env: dict, timeout: int, keep: Path | None = None) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = with_generated_images(nbformat.read(path, as_version=4))
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
    a = p.parse_args()
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.notebooks:
        paths = [ROOT / "notebooks" / (n if n.endswith(".ipynb") else f"{n}.ipynb") for n in a.notebooks]
    data = a.data or tempfile.mkdtemp(prefix="cifar_tl_bench_nb_")
    env = {"CIFAR_TL_PROFILE": a.profile, "CIFAR_TL_WIDGETS": "static", "CIFAR_TL_DATA": data}
    print(f"profile {a.profile}, generated images, random weights; data {data}; {os.cpu_count()} CPUs; "
          f"python {sys.version.split()[0]}")
    rows = []
    for path in paths:
        load, t0 = os.getloadavg()[0], time.perf_counter()
        try:
            seconds, failed = run(path, env, a.timeout, a.keep), ""
        except Exception as e:  # a cell that fails on these sizes: say which, and go on
            seconds, failed = time.perf_counter() - t0, f"  FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
        rows.append((path.stem, seconds, load, os.getloadavg()[0]))
        print(f"{path.stem:28s} {seconds:8.1f} s  (load {load:.1f} -> {os.getloadavg()[0]:.1f}){failed}", flush=True)
    print(json.dumps({r[0]: round(r[1], 1) for r in rows}))


if __name__ == "__main__":
    main()
