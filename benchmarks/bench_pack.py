"""A teacher's feature pack at CIFAR-100's size: its file size, and the time to train the
tutorial's head from it (one epoch, batch 8) on this CPU; and what a bf16 pack costs in accuracy.

    python benchmarks/bench_pack.py                      # size + time, a bf16 pack (a GPU teacher's)
    python benchmarks/bench_pack.py --dtype fp32         # the same from an fp32 pack (a CPU teacher's)
    python benchmarks/bench_pack.py --tolerance          # bf16 against fp32 packs on smoke data

Size and time: a pack of random features of the real size (EfficientNetV2-S's width 1280;
45,000 training images x 2 views, 5,000 validation, 10,000 test; CIFAR-100's class names, the
full profile's options), written by ``packfile.write`` as ``pack`` writes one. The time does not
depend on the values. Then ``python -m cifar_tl run --features PACK`` in a fresh process, as a
student types it: the full profile's head (1280-256-256-100, Adam 1e-3, batch 8, one epoch),
validation after the epoch, the test split once. Prints the file size against the format's
arithmetic, the process's wall time and the run's own steps (metrics.json "seconds").

Tolerance: for each (backbone, seed), packs made here in fp32 and in bf16 (torch engine, smoke
data, random weights), a head trained from each with the smoke profile's settings; prints both
test accuracies and their difference (the test uses ``BF16_TOLERANCE`` in tests/test_pack.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "default")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cifar_tl import data, pack, packfile, pipeline  # noqa: E402
from cifar_tl.config import Config  # noqa: E402

SIZES = {"train": 45_000, "val": 5_000, "test": 10_000}
WIDTH = 1280


def fake_pack(path: Path, dtype: str) -> dict:
    """A pack of the real size with random features, as the full profile would make it."""
    cfg = Config.for_profile("full")
    meta_c = data.cifar100_meta()
    g = torch.Generator().manual_seed(0)
    tensors, splits = {}, {}
    for name, n in SIZES.items():
        views = 2 if name == "train" else 1
        f = torch.rand(n, views, WIDTH, generator=g).to(packfile.STORED[dtype])
        tensors[f"{name}.features"] = f
        tensors[f"{name}.labels"] = torch.randint(100, (n,), generator=g)
        tensors[f"{name}.index"] = torch.arange(n)
        splits[name] = {"n": n, "views": ["original", "flipped"][:views], "images_sha256": "0" * 64,
                        "engine": "torch", "precision": dtype, "dtype": dtype}
    meta = {"format": packfile.FORMAT, "format_version": packfile.FORMAT_VERSION, "config": cfg.to_dict(),
            "backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size,
            "weights_sha256": None, "backbone_fingerprint": "0" * 24, "feature_dim": WIDTH,
            "engine": "torch", "precision": dtype, "device": "cuda", "class_names": meta_c["fine"],
            "coarse_classes": meta_c["coarse"], "fine_to_coarse": meta_c["fine_to_coarse"],
            "splits": splits, "versions": {}}
    packfile.write(path, tensors, meta)
    return meta


def expected_bytes(dtype: str) -> int:
    """The format's arithmetic: features, plus labels and indices (int64), without the header."""
    n_views = 2 * SIZES["train"] + SIZES["val"] + SIZES["test"]
    return n_views * WIDTH * packfile.STORED[dtype].itemsize + 16 * sum(SIZES.values())


def size_and_time(dtype: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"cifar100-efficientnet_v2_s-300px-{dtype}.safetensors"
        t0 = time.perf_counter()
        fake_pack(path, dtype)
        print(f"wrote a fake pack in {time.perf_counter() - t0:.1f} s")
        size = path.stat().st_size
        print(f"size: {size:,} bytes = {size / 1e6:.1f} MB ({dtype}; the format's arithmetic without "
              f"its header: {expected_bytes(dtype) / 1e6:.1f} MB)")
        env = {**os.environ, "CIFAR_TL_DATA": str(Path(tmp) / "data"), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "cifar_tl", "run", "--features", str(path), "--out", str(Path(tmp) / "run"),
               "--quiet"]
        t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode:
            sys.exit(proc.stderr)
        m = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        print(f"python -m cifar_tl run --features {path.name}: {wall:.1f} s wall, {cpu:.1f} s CPU (the "
              f"process, import included; peak RSS {after.ru_maxrss / 1e3:,.0f} MB); steps {m['seconds']}; "
              f"batch {m['config']['batch_size']}, {m['epochs']} epoch, {m['n_train']:,} training images")
        # The same in this process, in CPU seconds (the figure a busy machine does not inflate).
        c0 = time.process_time()
        pack.load(path)
        c1 = time.process_time()
        pipeline.run(pack.config_for(path, data_root=env["CIFAR_TL_DATA"], progress=False), Path(tmp) / "again")
        print(f"in one process, CPU seconds: reading and checking the pack {c1 - c0:.1f}, the whole run "
              f"(reading it again, one epoch, validation, test, files and plots) {time.process_time() - c1:.1f}")


def tolerance() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, size, n_train, n_test in (("resnet18", 32, 1000, 500), ("resnet18", 64, 1000, 500),
                                                 ("mobilenet_v3_small", 32, 1000, 500),
                                                 ("efficientnet_v2_s", 64, 200, 100)):
            for seed in (0, 1):
                base = Config.for_profile("smoke", backbone=backbone, image_size=size, train_size=n_train,
                                          test_size=n_test, seed=seed, data_root=tmp, progress=False)
                acc = {}
                for precision in ("fp32", "bf16"):
                    path, _ = pack.make_pack(base.replace(precision=precision), Path(tmp) / f"{precision}.safetensors")
                    m = pipeline.run(pack.config_for(path, data_root=tmp, progress=False), Path(tmp) / precision)
                    acc[precision] = m["test_accuracy"]
                print(f"{backbone} {size} px, {n_train} train / {n_test} test, seed {seed}: fp32 "
                      f"{acc['fp32']:.3f}, bf16 {acc['bf16']:.3f}, difference {acc['bf16'] - acc['fp32']:+.3f}",
                      flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--tolerance", action="store_true", help="bf16 against fp32 packs on smoke data")
    a = p.parse_args()
    print(f"torch {torch.__version__}, OMP_WAIT_POLICY={OMP_POLICY}, load {os.getloadavg()[0]:.2f}")
    tolerance() if a.tolerance else size_and_time(a.dtype)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
