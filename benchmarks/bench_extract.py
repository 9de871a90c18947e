"""Feature-extraction throughput and achieved GFLOP/s, against the device's dense-matmul peak.

    python benchmarks/bench_extract.py                          # CPU, 300 px, efficientnet_v2_s
    python benchmarks/bench_extract.py --device cuda --n 8192   # a GPU (bf16 autocast, channels_last)

It runs ``features.extract`` (batched PIL-exact resize, normalisation, both flip views, the frozen
backbone under inference_mode) on synthetic 32 px CIFAR-like images, random weights (the same
arithmetic as ImageNet weights). FLOPs of one image are counted with
torch.utils.flop_counter.FlopCounterMode (a multiply-add is 2 FLOPs: 10.6 GFLOP for
efficientnet_v2_s at 300 px). The peak is the best of a few large square matmuls on the same
device: float32 on a CPU, bfloat16 on CUDA (what the backbone runs in there).
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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_tl import features  # noqa: E402
from cifar_tl.config import resolve_device  # noqa: E402
from cifar_tl.models import build_backbone  # noqa: E402
from cifar_tl.synthetic import make_images  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_image(backbone: torch.nn.Module, image_size: int) -> float:
    """FLOPs of one forward pass of one image (counted on the CPU, fp32: the count is the same)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.cpu()(torch.zeros(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int | None = None, reps: int = 5) -> tuple[float, str]:
    """Best FLOP/s of an n x n @ n x n matmul: float32 on a CPU, bfloat16 on CUDA."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    inner = 20 if device.type == "cuda" else 1
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * n**3 / best, f"{str(dtype).replace('torch.', '')} {n}x{n} matmul"


def measure_extract(backbone, images: torch.Tensor, image_size: int, device: torch.device,
                    batch_size: int, views=features.VIEWS_TRAIN, reps: int = 2) -> float:
    """Best seconds of ``features.extract`` over all of ``images`` (after one warm-up batch)."""
    features.extract(backbone, images[:batch_size], image_size, device, views, batch_size, progress=False)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        features.extract(backbone, images, image_size, device, views, batch_size, progress=False)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--image-size", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: features.default_extract_batch)")
    p.add_argument("--n", type=int, default=None, help="images (each gives 2 views; default 32 on CPU, 8192 on CUDA)")
    p.add_argument("--backbone", default="efficientnet_v2_s")
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    bs = args.batch_size or features.default_extract_batch(device, args.image_size)
    n = args.n or (8192 if device.type == "cuda" else 32)
    n = max(bs, n - n % bs)  # whole batches: one shape, tuned once in the warm-up
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, weights=None)
    flops = flops_per_image(backbone, args.image_size)
    imgs, _ = make_images(-(-n // 100), seed=0)
    images = torch.from_numpy(imgs[:n]).permute(0, 3, 1, 2).contiguous()
    peak, peak_what = matmul_peak(device)
    seconds = measure_extract(backbone, images, args.image_size, device, bs, reps=args.reps)
    views_per_s = 2 * n / seconds
    achieved = views_per_s * flops
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, OMP_WAIT_POLICY {OMP_POLICY})",
        "torch": torch.__version__, "backbone": args.backbone, "image_size": args.image_size,
        "batch_size": bs, "images": n, "views": 2, "seconds": seconds,
        "backbone_images_per_s": views_per_s, "source_images_per_s": n / seconds,
        "gflop_per_image": flops / 1e9, "achieved_gflop_per_s": achieved / 1e9,
        "peak_gflop_per_s": peak / 1e9, "peak": peak_what, "fraction_of_peak": achieved / peak,
    }
    print(f"{args.backbone} at {args.image_size} px on {res['device']}, batch {bs} images x 2 views, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
          f"{', channels_last' if features.channels_last_pays(device) else ''}, load average {os.getloadavg()[0]:.2f}")
    print(f"  extraction: {views_per_s:10.1f} backbone images/s ({n / seconds:.1f} source images/s, both views)")
    print(f"  FLOPs:      {flops / 1e9:10.2f} GFLOP per image (FlopCounterMode)")
    print(f"  achieved:   {achieved / 1e9:10.1f} GFLOP/s")
    print(f"  peak:       {peak / 1e9:10.1f} GFLOP/s ({peak_what})")
    print(f"  fraction:   {achieved / peak:10.1%} of the matmul peak")
    return res


if __name__ == "__main__":
    main()
