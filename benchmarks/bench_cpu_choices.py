"""The measurements behind the fast path's CPU defaults: memory format and batch size of the
backbone, and threads for the head's training.

    python benchmarks/bench_cpu_choices.py                    # 64 and 112 px, efficientnet_v2_s
    python benchmarks/bench_cpu_choices.py --sizes 64 --reps 20

1. Backbone images/s (random efficientnet_v2_s, inference_mode) for NCHW and channels_last, at a
   few forward-batch sizes (the fast path's forward batch holds both views: 2x its image batch).
   -> preprocess.channels_last_pays, features.default_extract_batch
2. Head training steps/s (MLPHead on cached features, Adam, engine.train_one_epoch) with 1 and 2
   torch threads, at batch 8 (the tutorial's) and 32 (the cpu profile's).
   -> engine.head_threads

Each configuration is timed many times, interleaved, and its best kept: on a shared machine
other jobs only ever slow a run down, so the best is the closest to the machine's own speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# OpenMP's wait policy changes CPU timings a lot on 2 cores (benchmarks/README.md): record it.
OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "default")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_tl import engine, features  # noqa: E402
from cifar_tl.models import MLPHead, build_backbone  # noqa: E402


def backbone_rates(name: str, size: int, batches: list[int], reps: int) -> dict:
    torch.manual_seed(0)
    bb = build_backbone(name, weights=None)
    best: dict = {}
    with torch.inference_mode():
        for rep in range(reps):
            for cl in (False, True):
                fmt = torch.channels_last if cl else torch.contiguous_format
                bb = bb.to(memory_format=fmt)
                for b in batches:
                    x = torch.randn(b, 3, size, size).contiguous(memory_format=fmt)
                    if rep == 0:
                        bb(x)  # oneDNN sets up each shape once
                    t0 = time.perf_counter()
                    bb(x)
                    best[(cl, b)] = max(best.get((cl, b), 0.0), b / (time.perf_counter() - t0))
    return best


def head_rates(dim: int, batches: list[int], threads: list[int], steps: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    feats, targets = torch.randn(steps * max(batches), 2, dim, generator=g), torch.randint(0, 100, (steps * max(batches),), generator=g)
    best: dict = {}
    before = torch.get_num_threads()
    for _ in range(reps):
        for b in batches:
            for th in threads:
                torch.set_num_threads(th)
                torch.manual_seed(0)
                head = MLPHead(dim, 100)
                head.standardizer.fit_stats(feats)
                opt, loss_fn = engine.make_optimizer(head), torch.nn.CrossEntropyLoss()
                loader = features.FeatureLoader(feats[: steps * b], targets[: steps * b], b, train=True)
                t0 = time.perf_counter()
                engine.train_one_epoch(head, loader, opt, loss_fn, "cpu", progress=False)
                best[(b, th)] = max(best.get((b, th), 0.0), len(loader) / (time.perf_counter() - t0))
    torch.set_num_threads(before)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="efficientnet_v2_s")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[64, 112])
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32, 64, 128],
                   help="forward-batch sizes for the backbone")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--head-steps", type=int, default=300)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY {OMP_POLICY}, load average before "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for size in args.sizes:
        best = backbone_rates(args.backbone, size, args.batches, args.reps)
        print(f"{args.backbone} at {size} px, backbone images/s (best of {args.reps}):")
        print("  forward batch  " + "".join(f"{b:>9d}" for b in args.batches))
        for cl in (False, True):
            print(f"  {'channels_last' if cl else 'NCHW':<13}  " + "".join(f"{best[(cl, b)]:9.1f}" for b in args.batches))
    best = head_rates(1280, [8, 32], [1, 2], args.head_steps, max(3, args.reps // 3))
    print("head training steps/s (1280 -> 256 -> 256 -> 100, Adam):")
    for b in (8, 32):
        print(f"  batch {b:<3d} " + "  ".join(f"{th} thread{'s' if th > 1 else ''}: {best[(b, th)]:7.0f}" for th in (1, 2)))
    print(f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
