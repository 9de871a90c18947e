"""Extraction speed of every engine and precision available here, each in a fresh child process.

    python benchmarks/bench_extract.py --image-size 300 --json out.json
    python benchmarks/bench_extract.py --image-size 160 --json out.json --batch 16 --repeat 3 --rounds 2

Each (engine, precision) runs ``features.extract`` (batched PIL-exact resize, normalisation, the
frozen backbone) over the same synthetic 32 px images with random weights (the arithmetic of
ImageNet weights) in its own process: engines sharing a process slow each other through their
thread pools. The JSON holds ``{"results": [{"engine", "precision", "images_per_s", ...}],
"default": {"engine", "precision"}}``, where ``default`` is what ``--engine auto --precision auto``
picks on this machine.

Figures are given against the fastest result here and against torch fp32, not as a fraction of a
FLOP peak: on a CPU oneDNN may run 3x3 convolutions as Winograd transforms (fewer multiplications
than the nominal count) and depthwise convolutions are bound by memory, so "achieved GFLOP/s over
the matmul peak" can read 90% where a faster engine still doubles the speed. The matmul peaks
are printed for reference only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_tl import engines, features  # noqa: E402
from cifar_tl.devices import resolve_device  # noqa: E402
from cifar_tl.models import build_backbone  # noqa: E402
from cifar_tl.synthetic import make_images  # noqa: E402


def candidates(device: torch.device) -> list[tuple[str, str]]:
    """(engine, precision) pairs worth measuring here: reduced precisions where they are native."""
    if device.type == "cuda":
        return [("torch", "fp32"), ("torch", "bf16" if torch.cuda.is_bf16_supported() else "fp16")]
    if device.type != "cpu":
        return [("torch", "fp32"), ("torch", "fp16")]
    precisions = ["fp32", "bf16"] if engines.native_bf16() else ["fp32"]
    names = ["torch", "openvino"] if engines.openvino_available() else ["torch"]
    return [(e, p) for e in names for p in precisions]


def child(args) -> None:
    """Measure one (engine, precision) and print its result as one JSON line."""
    device = resolve_device(args.device)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, weights=None)
    t0 = time.perf_counter()
    runner = engines.make_runner(backbone, device, args.image_size, args.engine, args.precision,
                                 data_root=args.data_root)
    setup = time.perf_counter() - t0
    bs = args.batch or features.default_extract_batch(device, args.image_size)
    n = bs * args.batches
    imgs, _ = make_images(-(-n // 100), seed=0)
    images = torch.from_numpy(imgs[:n]).permute(0, 3, 1, 2).contiguous()
    views = features.VIEWS_TEST  # one view: images/s is backbone images/s

    def once(k):
        f = features.extract(backbone, images[:k], args.image_size, device, views, bs,
                             progress=False, runner=runner)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return f

    sample = once(bs)  # warm-up; also the features compared across engines
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        once(n)
        best = min(best, time.perf_counter() - t0)
    torch.save(sample[:, 0], args.features_out)
    print(json.dumps({"engine": runner.engine, "precision": runner.precision,
                      "images_per_s": n / best, "seconds": best, "images": n, "batch": bs,
                      "setup_s": setup, "threads": torch.get_num_threads()}))


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=300)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default: features.default_extract_batch)")
    p.add_argument("--batches", type=int, default=4, help="batches timed per repeat")
    p.add_argument("--repeat", type=int, default=3, help="best of this many timed passes")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every engine this many times, interleaved, and keep each one's best "
                        "(on a shared machine, other jobs then weigh on all engines alike)")
    p.add_argument("--backbone", default="efficientnet_v2_s")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help="where converted models and the precision probe are kept")
    p.add_argument("--engine", default=None, help=argparse.SUPPRESS)  # set in the child processes
    p.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    p.add_argument("--features-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine:
        return child(args)

    device = resolve_device(args.device)
    default = dict(zip(("engine", "precision"), (
        engines.resolve_engine("auto", device)[0], engines.resolve_precision("auto", device, args.data_root)[0])))
    best_of, tmp = {}, Path(tempfile.mkdtemp(prefix="bench_extract-"))
    for _ in range(args.rounds):
        for engine, precision in candidates(device):
            out = tmp / f"{engine}-{precision}.pt"
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                   "--engine", engine, "--precision", precision, "--features-out", str(out)]
            load_before = os.getloadavg()[0]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{engine} {precision}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(load_before=load_before, load_after=os.getloadavg()[0], features_file=str(out))
            if r["images_per_s"] > best_of.get((engine, precision), {}).get("images_per_s", 0):
                best_of[(engine, precision)] = r
    results = list(best_of.values())
    ref = next((r for r in results if (r["engine"], r["precision"]) == ("torch", "fp32")), None)
    best = max(r["images_per_s"] for r in results)
    ref_f = torch.load(ref["features_file"]) if ref else None
    for r in results:
        f = torch.load(r.pop("features_file"))
        r["vs_fastest"] = r["images_per_s"] / best
        if ref is not None:
            r["vs_torch_fp32"] = r["images_per_s"] / ref["images_per_s"]
            r["max_error_vs_torch_fp32"] = float((f - ref_f).abs().max() / ref_f.abs().max())
        r["default"] = (r["engine"], r["precision"]) == (default["engine"], default["precision"])
    peaks = {"fp32": matmul_peak(torch.float32)}
    if engines.native_bf16():
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    report = {"results": results, "default": default, "backbone": args.backbone,
              "image_size": args.image_size, "device": str(device), "cpu": engines.cpu_model(),
              "torch": torch.__version__, "matmul_peak_gflop_per_s": peaks,
              "load_average_end": os.getloadavg()[0]}
    print(f"{args.backbone} at {args.image_size} px on {device} ({engines.cpu_model()}), "
          f"default here: {default['engine']} {default['precision']}")
    for r in sorted(results, key=lambda r: -r["images_per_s"]):
        print(f"  {r['engine']:9s} {r['precision']:5s} {r['images_per_s']:8.1f} images/s  "
              f"{r['vs_fastest']:5.2f}x fastest  {r.get('vs_torch_fp32', float('nan')):5.2f}x torch fp32  "
              f"max error {r.get('max_error_vs_torch_fp32', float('nan')):.1e}  "
              f"(batch {r['batch']}, setup {r['setup_s']:.1f} s, load {r['load_before']:.2f}->{r['load_after']:.2f})"
              f"{'  <- default' if r['default'] else ''}")
    print("  matmul peaks (reference only, see the docstring): "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
