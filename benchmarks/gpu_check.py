"""GPU check (under 5 minutes): the tutorial's path, the fast path's extraction and head training,
and a projected "whole tutorial-equivalent epoch" on this machine. Nothing is downloaded.

    python benchmarks/gpu_check.py                      # on a GPU machine, from the repo root
    python benchmarks/gpu_check.py --device cpu --quick # the same code paths, tiny sizes (CI, laptops)

Needs only torch and torchvision (plus numpy, pillow, tqdm, which torchvision brings or the repo's
environment has); cifar_tl is imported from this checkout. Synthetic CIFAR-like images and random
weights: throughput is the same as with ImageNet weights (same arithmetic), accuracy is not measured.

Measures:
  1. the tutorial's path: PIL transforms per image, collate_fn, DataLoader of batch 8
     (num_workers=0, as the tutorial), the backbone and the head trained every step, fp32.
  2. fast-path extraction at 300 px: both flip views, bf16 autocast, channels_last, large batches
     (a few batch sizes, the best kept); then torch.compile'd (on CUDA by default), in a child
     process with a time limit, so a slow or failing compile cannot sink the check.
  3. head training steps/s at batch 8 on cached features kept on the GPU (engine.train_one_epoch
     over a FeatureLoader), and the evaluation of 10,000 cached test features.
  4. the projection of one tutorial-equivalent epoch: extract 50,000 x 2 training views + 10,000
     test images, train the head for 6,250 steps of 8, evaluate 10,000.
  5. fine-tuning (finetune.fine_tune): training images/s with the top 2 stages and with the whole
     backbone unfrozen (preprocessing on the device, random flips, autocast, channels_last, AdamW,
     the largest batch that fits), and the projected fine-tuning epoch on CIFAR-100.
Goals on one H100: >= 5,000 backbone images/s at 300 px, the whole epoch under 60 s.
Prints a table; writes $OUT/gpu_check.json when $OUT is set (or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# OpenMP's wait policy changes CPU timings a lot on 2 cores (benchmarks/README.md): record it.
OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "default")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
try:  # cifar_tl's progress bars; a bare machine without tqdm gets a silent stand-in
    import tqdm  # noqa: F401
except ImportError:
    import types

    _stub = types.ModuleType("tqdm")
    _stub.tqdm = lambda it=None, *a, **k: it
    sys.modules["tqdm"] = _stub

from cifar_tl import data, engine, features, preprocess  # noqa: E402
from cifar_tl.models import MLPHead, TransferModel, build_backbone  # noqa: E402
from cifar_tl.synthetic import SyntheticCIFAR, make_images  # noqa: E402

TRAIN, TEST, BATCH = 50_000, 10_000, 8  # CIFAR-100 and the tutorial's batch
GOAL_EXTRACT, GOAL_EPOCH = 5_000, 60.0
T_START = time.perf_counter()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _elapsed() -> float:
    return time.perf_counter() - T_START


def _say(msg: str) -> None:
    print(f"[{_elapsed():6.1f} s] {msg}", flush=True)


def _backbone(name: str, device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, weights=None).to(device)


def _uint8_images(n: int) -> torch.Tensor:
    imgs, _ = make_images(-(-n // 100), seed=0)
    return torch.from_numpy(imgs[:n]).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- 1. tutorial's path
def tutorial_path(args, device, backbone) -> dict:
    """images/s of the tutorial's training loop (data loading included), after a warm-up."""
    torch.manual_seed(0)
    model = TransferModel(backbone, MLPHead(backbone.num_features, 100)).to(device)
    opt = engine.make_optimizer(model)
    loss_fn = torch.nn.CrossEntropyLoss()

    def loader(n, seed):
        ds = SyntheticCIFAR(train=True, n_per_class=-(-n // 100), seed=seed,
                            transform=data.train_transform(args.image_size))
        ds.data, ds.targets = ds.data[:n], ds.targets[:n]
        return data.make_loader(ds, BATCH, train=True, seed=seed)

    engine.train_one_epoch(model, loader(5 * BATCH, 1), opt, loss_fn, device, progress=False)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    stats = engine.train_one_epoch(model, loader(args.tutorial_images, 0), opt, loss_fn, device, progress=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": stats["n"], "seconds": seconds, "images_per_s": stats["n"] / seconds}


# --------------------------------------------------------------------------- 2. extraction
def extraction(args, device, backbone, batch_sizes=None) -> dict:
    """Backbone images/s of features.extract (both views), best over a few batch sizes."""
    images = _uint8_images(args.extract_images)
    rows = []
    for bs in batch_sizes or args.extract_batches:
        try:
            warm = images[: bs]  # cuDNN's autotuning for this batch shape, outside the timing
            features.extract(backbone, warm, args.image_size, device, batch_size=bs, progress=False)
            _sync(device)
            n = len(images) - len(images) % bs or len(images)  # whole batches only: one shape
            t0 = time.perf_counter()
            features.extract(backbone, images[:n], args.image_size, device, batch_size=bs, progress=False)
            _sync(device)
            s = time.perf_counter() - t0
            rows.append({"batch_size": bs, "images": n, "seconds": s, "backbone_images_per_s": 2 * n / s})
            _say(f"  extract batch {bs:4d} images x 2 views: {2 * n / s:9.1f} backbone images/s")
        except torch.cuda.OutOfMemoryError:
            _say(f"  extract batch {bs}: out of memory, skipped")
            torch.cuda.empty_cache()
        if _elapsed() > args.budget * 0.5:
            break
    best = max(rows, key=lambda r: r["backbone_images_per_s"])
    return {"best": best, "all": rows}


def compiled_extraction(args, device, batch_size: int) -> dict | None:
    """torch.compile'd backbone, in a child process with a time limit; None if it fails or is slow."""
    remaining = args.budget - _elapsed() - 30
    if remaining < 90:
        _say(f"torch.compile skipped: {remaining:.0f} s left in the budget")
        return {"skipped": f"only {remaining:.0f} s left"}
    cmd = [sys.executable, __file__, "--child-compile", "--device", str(device), "--image-size",
           str(args.image_size), "--extract-images", str(args.extract_images), "--backbone", args.backbone,
           "--extract-batches", str(batch_size)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=remaining)
    except subprocess.TimeoutExpired:
        _say(f"torch.compile: gave up after {remaining:.0f} s")
        return {"skipped": f"timed out after {remaining:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        _say(f"torch.compile failed: {tail}")
        return {"failed": tail}
    return json.loads(lines[-1])


def _child_compile(args, device) -> None:
    backbone = _backbone(args.backbone, device).to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    compiled = torch.compile(backbone)  # attributes such as num_features pass through
    res = extraction(args, device, compiled, batch_sizes=args.extract_batches)
    res["wall_seconds_with_compile"] = time.perf_counter() - t0
    print(json.dumps(res))


# --------------------------------------------------------------------------- 3. head
def head_training(args, device, dim: int) -> dict:
    """Steps/s of the head at batch 8 on cached features on the device, and the evaluation time."""
    g = torch.Generator().manual_seed(0)
    n = args.head_steps * BATCH
    feats = torch.randn(n, 2, dim, generator=g)
    targets = torch.randint(0, 100, (n,), generator=g)
    torch.manual_seed(0)
    head = MLPHead(dim, 100).to(device)
    head.standardizer.fit_stats(feats)
    opt, loss_fn = engine.make_optimizer(head), torch.nn.CrossEntropyLoss()
    loader = features.FeatureLoader(feats, targets, BATCH, train=True, seed=0, device=device)
    warm = features.FeatureLoader(feats[:50 * BATCH], targets[:50 * BATCH], BATCH, train=True, device=device)
    with engine.head_threads(device):  # one thread on a CPU; nothing changes on a GPU
        engine.train_one_epoch(head, warm, opt, loss_fn, device, progress=False)
        _sync(device)
        t0 = time.perf_counter()
        engine.train_one_epoch(head, loader, opt, loss_fn, device, progress=False)
        _sync(device)
        train_s = time.perf_counter() - t0
    test = features.FeatureLoader(torch.randn(args.eval_images, 1, dim, generator=g),
                                  torch.randint(0, 100, (args.eval_images,), generator=g), 256,
                                  train=False, device=device)
    engine.evaluate(head, test, device, progress=False)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    engine.evaluate(head, test, device, progress=False)
    _sync(device)
    eval_s = time.perf_counter() - t0
    return {"steps": len(loader), "seconds": train_s, "steps_per_s": len(loader) / train_s,
            "eval_images": args.eval_images, "eval_seconds": eval_s}


# --------------------------------------------------------------------------- 5. fine-tuning
def fine_tuning(args, device, extract_rate: float) -> dict:
    """Training images/s of finetune.fine_tune for K = 2 and all (the second of two epochs, after
    cuDNN's autotuning), and the projected CIFAR-100 fine-tuning epoch."""
    import types

    from cifar_tl import Config, finetune

    imgs, labels = make_images(-(-args.finetune_images // 100), seed=0)
    train = types.SimpleNamespace(data=imgs[: args.finetune_images], targets=list(labels[: args.finetune_images]))
    test = types.SimpleNamespace(data=imgs[:64], targets=list(labels[:64]))
    out = {}
    for k in (2, "all"):
        torch.manual_seed(0)
        backbone = _backbone(args.backbone, device)
        model = TransferModel(backbone, MLPHead(backbone.num_features, 100)).to(device)
        finetune.unfreeze(model.backbone, k)
        bs = finetune.largest_batch(model, args.image_size, device, start=BATCH, limit=args.finetune_batch_limit)
        cfg = Config.for_profile("smoke", backbone=args.backbone, image_size=args.image_size, batch_size=bs,
                                 precision="auto", progress=False)
        try:
            hist = finetune.fine_tune(model, train, test, cfg, device, epochs=2, batch_size=bs)
        except torch.cuda.OutOfMemoryError:
            _say(f"  fine-tune K={k} batch {bs}: out of memory")
            out[str(k)] = {"batch_size": bs, "failed": "out of memory"}
            torch.cuda.empty_cache()
            continue
        rate = hist[-1]["images_per_second"]
        epoch = TRAIN / rate + (TEST + 1000) / extract_rate  # + evaluation and the standardiser refit
        out[str(k)] = {"batch_size": bs, "images_per_s": rate, "trainable": sum(
            p.numel() for p in model.parameters() if p.requires_grad), "projected_epoch_seconds": epoch,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        _say(f"  K={k}: batch {bs}, {rate:.1f} training images/s, projected CIFAR-100 epoch {epoch:.0f} s")
        del model, backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return out


# --------------------------------------------------------------------------- main
def _device_name(device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, OMP_WAIT_POLICY {OMP_POLICY}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: exercise every code path in seconds")
    p.add_argument("--image-size", type=int, default=None, help="default 300 (64 with --quick)")
    p.add_argument("--backbone", default="efficientnet_v2_s")
    p.add_argument("--tutorial-images", type=int, default=None, help="default 400 (16 with --quick)")
    p.add_argument("--extract-images", type=int, default=None, help="default 8192 (32 with --quick)")
    p.add_argument("--extract-batches", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="batch sizes to try, comma-separated (default 128,256,512; 16 with --quick)")
    p.add_argument("--head-steps", type=int, default=None, help="default 3000 (100 with --quick)")
    p.add_argument("--eval-images", type=int, default=TEST)
    p.add_argument("--finetune-images", type=int, default=None, help="default 4096 (32 with --quick)")
    p.add_argument("--finetune-batch-limit", type=int, default=None, help="largest batch tried (default 512; 8 with --quick)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also try torch.compile (a child process, time-limited); default: on CUDA only")
    p.add_argument("--budget", type=float, default=270.0, help="seconds; later steps are skipped past it")
    p.add_argument("--json", default=None, help="where to write the JSON (default $OUT/gpu_check.json)")
    p.add_argument("--child-compile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.image_size = args.image_size or (64 if q else 300)
    args.tutorial_images = args.tutorial_images or (16 if q else 400)
    args.extract_images = args.extract_images or (32 if q else 8192)
    args.extract_batches = args.extract_batches or ([16] if q else [128, 256, 512])
    args.head_steps = args.head_steps or (100 if q else 3000)
    args.finetune_images = args.finetune_images or (32 if q else 4096)
    args.finetune_batch_limit = args.finetune_batch_limit or (BATCH if q else 512)
    if q:
        args.eval_images = min(args.eval_images, 512)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no CUDA GPU (use --device cpu --quick)")
    if args.child_compile:
        return _child_compile(args, device)

    res = {"device": _device_name(device), "torch": torch.__version__,
           "torchvision": __import__("torchvision").__version__, "quick": q,
           "image_size": args.image_size, "backbone": f"{args.backbone} (random weights)"}
    _say(f"gpu_check on {res['device']}, torch {res['torch']}, {args.backbone} at {args.image_size} px")

    _say(f"1. tutorial's path: {args.tutorial_images} images, PIL transforms, DataLoader batch 8, fp32")
    backbone = _backbone(args.backbone, device)  # NCHW for the tutorial; extract makes it channels_last
    res["tutorial"] = tutorial_path(args, device, backbone)
    _say(f"  {res['tutorial']['images_per_s']:.1f} images/s")

    _say(f"2. fast-path extraction: {args.extract_images} images x 2 views, "
         f"{'bf16 autocast, ' if features.amp_dtype(device, True) else ''}"
         f"{'channels_last' if preprocess.channels_last_pays(device) else 'contiguous'}")
    res["extract"] = extraction(args, device, backbone)
    if args.compile if args.compile is not None else device.type == "cuda":
        res["extract_compiled"] = compiled_extraction(args, device, res["extract"]["best"]["batch_size"])

    _say(f"3. head training at batch {BATCH} on cached features on {device.type}")
    res["head"] = head_training(args, device, backbone.num_features)
    _say(f"  {res['head']['steps_per_s']:.0f} steps/s; evaluate {args.eval_images} in {res['head']['eval_seconds']:.3f} s")

    rate = res["extract"]["best"]["backbone_images_per_s"]
    compiled = (res.get("extract_compiled") or {}).get("best")
    if compiled and compiled["backbone_images_per_s"] > rate:
        rate = compiled["backbone_images_per_s"]
    views = 2 * TRAIN + TEST
    proj = {
        "extract_seconds": views / rate,
        "train_seconds": TRAIN // BATCH / res["head"]["steps_per_s"],
        "evaluate_seconds": res["head"]["eval_seconds"] * TEST / args.eval_images,
    }
    proj["total_seconds"] = sum(proj.values())
    proj["tutorial_epoch_seconds"] = (TRAIN + TEST) / res["tutorial"]["images_per_s"]
    res["projection"] = proj
    res["goals"] = {"extract_backbone_images_per_s": rate, "extract_goal": GOAL_EXTRACT,
                    "extract_ok": rate >= GOAL_EXTRACT, "epoch_seconds": proj["total_seconds"],
                    "epoch_goal": GOAL_EPOCH, "epoch_ok": proj["total_seconds"] < GOAL_EPOCH}
    if _elapsed() < args.budget:
        _say("5. fine-tuning: top 2 stages and the whole backbone, training images/s")
        res["finetune"] = fine_tuning(args, device, rate)
    else:
        res["finetune"] = {"skipped": "time budget spent"}
    res["wall_seconds"] = _elapsed()

    best = res["extract"]["best"]
    rows = [
        ("tutorial's path (batch 8, PIL, DataLoader)", f"{res['tutorial']['images_per_s']:.1f} images/s"),
        (f"extraction, 2 views, batch {best['batch_size']}", f"{best['backbone_images_per_s']:.1f} backbone images/s"),
    ]
    if compiled:
        rows.append((f"extraction, torch.compile, batch {compiled['batch_size']}",
                     f"{compiled['backbone_images_per_s']:.1f} backbone images/s"))
    rows += [
        ("head training, batch 8, features on device", f"{res['head']['steps_per_s']:.0f} steps/s"),
        (f"projected: extract {2 * TRAIN:,} + {TEST:,} views", f"{proj['extract_seconds']:.1f} s"),
        (f"projected: train head {TRAIN // BATCH:,} steps", f"{proj['train_seconds']:.1f} s"),
        (f"projected: evaluate {TEST:,}", f"{proj['evaluate_seconds']:.2f} s"),
        ("projected: whole epoch, fast path", f"{proj['total_seconds']:.1f} s (goal < {GOAL_EPOCH:.0f} s: "
         f"{'met' if res['goals']['epoch_ok'] else 'NOT met'})"),
        ("projected: whole epoch, tutorial's path", f"{proj['tutorial_epoch_seconds']:.0f} s"),
        ("extraction goal", f">= {GOAL_EXTRACT:,} backbone images/s: {'met' if res['goals']['extract_ok'] else 'NOT met'}"),
    ]
    for k, ft in res["finetune"].items():
        if isinstance(ft, dict) and "images_per_s" in ft:
            rows += [(f"fine-tune K={k}, batch {ft['batch_size']}", f"{ft['images_per_s']:.1f} training images/s"),
                     (f"projected: fine-tuning epoch K={k} (50,000 + eval)", f"{ft['projected_epoch_seconds']:.0f} s")]
    width = max(len(a) for a, _ in rows)
    print(f"\ngpu_check: {res['device']}, torch {res['torch']}, {args.backbone} (random) at "
          f"{args.image_size} px{' (QUICK: tiny sizes, not the real check)' if q else ''}")
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    print(f"  (wall time {res['wall_seconds']:.0f} s)")
    out = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2))
        print(f"  wrote {out}")
    return res


if __name__ == "__main__":
    main()
