"""The tutorial's path against the fast path: the same training, in one process, seconds and ratio.

    python benchmarks/bench_pipeline.py          # N=1000 images, 64 px, 6 epochs, batch 8, CPU

Tutorial's path: per-image PIL transforms (Resize, CenterCrop, RandomHorizontalFlip, ToTensor,
Normalize), collate_fn, a DataLoader of batch 8, the frozen backbone on every image of every epoch,
the head trained by Adam. Fast path: both flip views of every image extracted once (batched
preprocessing, large batches), written to a feature cache, then the head trained for the same
epochs, on the same batch size, each sample drawing one view per epoch.

Both use the same backbone object (efficientnet_v2_s, random weights: the same arithmetic as the
ImageNet weights), the same synthetic CIFAR-like images and the same head. With two views, the
fast path runs the backbone on 2N images instead of E*N: the ideal ratio is E/2 (3 at E=6), more
where large batches run faster per image than batches of 8.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# OpenMP's wait policy changes CPU timings a lot on 2 cores (benchmarks/README.md): record it.
OMP_POLICY = os.environ.get("OMP_WAIT_POLICY", "default")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_tl import data, engine, features  # noqa: E402
from cifar_tl.config import Config  # noqa: E402
from cifar_tl.models import MLPHead, TransferModel, build_backbone  # noqa: E402
from cifar_tl.synthetic import SyntheticCIFAR  # noqa: E402


def synthetic(n: int, seed: int = 0) -> SyntheticCIFAR:
    ds = SyntheticCIFAR(train=True, n_per_class=-(-n // 100), seed=seed)
    ds.data, ds.targets = ds.data[:n], ds.targets[:n]
    return ds


def tutorial_path(backbone, ds, args) -> dict:
    torch.manual_seed(args.seed)
    model = TransferModel(backbone, MLPHead(backbone.num_features, 100))
    # The head's standardisation needs feature statistics (a random backbone's features barely
    # vary): taken from 200 images, outside the timing, so that both heads learn.
    images = features.images_uint8(ds, args.image_size)[:200]
    model.head.standardizer.fit_stats(features.extract(backbone, images, args.image_size, "cpu",
                                                       features.VIEWS_TEST, progress=False))
    ds.transform = data.train_transform(args.image_size)
    loader = data.make_loader(ds, args.batch_size, train=True, seed=args.seed)
    t0 = time.perf_counter()
    hist = engine.fit(model, loader, None, epochs=args.epochs, seed=args.seed, progress=False)
    return {"seconds": time.perf_counter() - t0, "train_accuracy": hist[-1]["train_accuracy"]}


def fast_path(backbone, ds, args) -> dict:
    cfg = Config(backbone=args.backbone, weights=None, image_size=args.image_size, progress=False,
                 extract_batch_size=args.extract_batch)
    torch.manual_seed(args.seed)
    head = MLPHead(backbone.num_features, 100)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        feats, targets, info = features.cached_features(cfg, ds, backbone, "cpu", features.VIEWS_TRAIN,
                                                        cache_dir=cache_dir)
        t1 = time.perf_counter()
        assert not info["hit"]
    head.standardizer.fit_stats(feats)
    loader = features.FeatureLoader(feats, targets, args.batch_size, train=True, seed=args.seed)
    t2 = time.perf_counter()
    with engine.head_threads("cpu", args.head_threads or torch.get_num_threads()):
        hist = engine.fit(head, loader, None, epochs=args.epochs, seed=args.seed, progress=False)
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "extract": t1 - t0, "train": t3 - t2,
            "train_accuracy": hist[-1]["train_accuracy"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="training images")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8, help="head training batch, both paths (the tutorial's 8)")
    p.add_argument("--backbone", default="efficientnet_v2_s")
    p.add_argument("--extract-batch", type=int, default=None, help="images per extraction batch (default: features.default_extract_batch)")
    p.add_argument("--head-threads", type=int, default=1,
                   help="torch threads while the head trains on cached features (engine.head_threads; 0: all)")
    p.add_argument("--only", choices=("tutorial", "fast"), help="run one path only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    backbone = build_backbone(args.backbone, weights=None)
    ds = synthetic(args.n, args.seed)
    print(f"{args.n} images, {args.image_size} px, {args.epochs} epochs, batch {args.batch_size}, "
          f"{args.backbone} (random weights), {torch.get_num_threads()} threads, OMP_WAIT_POLICY {OMP_POLICY}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    with torch.inference_mode():  # oneDNN sets up each batch shape once: not part of either path
        for b in (args.batch_size, 2 * (args.extract_batch or features.default_extract_batch("cpu", args.image_size))):
            backbone(torch.randn(b, 3, args.image_size, args.image_size))
    slow = fast = None
    if args.only != "fast":
        slow = tutorial_path(backbone, ds, args)
        print(f"tutorial path: {slow['seconds']:8.1f} s  ({slow['seconds'] / args.epochs:.1f} s per epoch, "
              f"{args.n * args.epochs / slow['seconds']:.1f} images/s; train accuracy {slow['train_accuracy']:.3f})")
    if args.only != "tutorial":
        fast = fast_path(backbone, ds, args)
        print(f"fast path:     {fast['seconds']:8.1f} s  (extract both views {fast['extract']:.1f} s = "
              f"{2 * args.n / fast['extract']:.1f} images/s, train head {fast['train']:.2f} s; "
              f"train accuracy {fast['train_accuracy']:.3f})")
    if slow and fast:
        print(f"ratio:         {slow['seconds'] / fast['seconds']:8.2f}x  (ideal with two views: E/2 = {args.epochs / 2:g})")


if __name__ == "__main__":
    main()
