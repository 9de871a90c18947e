"""--weights synthetic: the pretraining's cost, and what it buys on smoke data (issue 15).

python benchmarks/bench_pretrain.py --build     # time the pretraining in a fresh TORCH_HOME
python benchmarks/bench_pretrain.py --claims    # the figures tests/test_transfer_claims.py asserts
python benchmarks/bench_pretrain.py --claims --weights none   # the same with the pretraining off
python benchmarks/bench_pretrain.py --step      # CPU time of one training step per backbone

Every figure is on a validation part held out of the training split, as the tests compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build() -> None:
    import torch

    from cifar_tl import console, pretrain
    from cifar_tl.backbones import build_backbone

    console.enable_notices()
    with tempfile.TemporaryDirectory() as home:
        os.environ["TORCH_HOME"] = home
        print(f"load before: {os.getloadavg()[0]:.2f}; threads {torch.get_num_threads()}; "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}; recipe {pretrain.RECIPE}")
        t, c = time.perf_counter(), time.process_time()
        build_backbone("resnet18", "synthetic")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        path = pretrain.cached_file("resnet18")
        print(f"pretraining resnet18: {wall:.1f} s wall, {cpu:.1f} s process CPU; load after "
              f"{os.getloadavg()[0]:.2f}; {path.name}, {path.stat().st_size / 1e6:.1f} MB")
        t = time.perf_counter()
        build_backbone("resnet18", "synthetic")
        print(f"second call (load + sha256 check): {time.perf_counter() - t:.2f} s")


def step() -> None:
    import torch
    import torchvision
    from torch import nn

    for name, size in (("resnet18", 32), ("resnet18", 64), ("efficientnet_v2_s", 32)):
        torch.manual_seed(0)
        m = torchvision.models.get_model(name, weights=None, num_classes=192).train()
        opt = torch.optim.AdamW(m.parameters(), 1e-3)
        x, y = torch.randn(128, 3, size, size), torch.randint(0, 192, (128,))
        for i in range(4):
            if i == 1:
                t, c = time.perf_counter(), time.process_time()
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        wall, cpu = (time.perf_counter() - t) / 3, (time.process_time() - c) / 3
        print(f"{name} {size} px: one step of 128 images {wall:.2f} s wall, {cpu:.2f} s process CPU "
              f"({128 / cpu:.0f} images per CPU-second); load {os.getloadavg()[0]:.2f}")


def claims(weights) -> None:
    import torch

    from tests import test_transfer_claims as t

    torch.set_num_threads(1)
    t.PRETRAINED = weights
    print(f"weights={weights}; load {os.getloadavg()[0]:.2f}")
    train_ds, val_ds = t.splits("synthetic")
    from cifar_tl.models import build_backbone

    start = time.perf_counter()
    backbone, random_backbone = build_backbone("resnet18", weights), build_backbone("resnet18", None)
    pre, pre_head = t.frozen_head(backbone, train_ds, val_ds, standardize=False)
    rnd, rnd_head = t.frozen_head(random_backbone, train_ds, val_ds, standardize=True)
    print(f"target: {weights} + bare head {pre:.3f}; random + standardised head {rnd:.3f} "
          f"(ratio {pre / max(rnd, 1e-9):.2f}, {100 * (pre - rnd):+.1f} points) [{time.perf_counter() - start:.0f} s]")
    from cifar_tl import features

    y = torch.tensor(val_ds.targets)
    for name, bb, head in ((f"{weights} + bare head", backbone, pre_head),
                           ("random + standardised head", random_backbone, rnd_head)):
        x = features.extract(bb, t.image_tensor(val_ds), 32, "cpu", features.VIEWS_TEST, progress=False)[:, 0]
        with torch.no_grad():
            p = head.eval()(x).argmax(1)
        print(f"  {name}: hue right {(p // 10 == y // 10).float().mean():.3f}, "
              f"texture right {(p % 10 == y % 10).float().mean():.3f}")
    start = time.perf_counter()
    sh_train, sh_val = t.splits("synthetic-sketch", per_class_train=t.SHIFTED_PER_CLASS_TRAIN)
    frozen, _ = t.frozen_head(backbone, sh_train, sh_val, standardize=False, epochs=8)
    print(f"shifted: frozen head {frozen:.3f}")
    for decay, bn in ((0.3, False), (1.0, False), (0.3, True), (0.001, False)):
        acc = t.fine_tuned(sh_train, sh_val, lr_decay=decay, bn_train=bn)
        print(f"shifted: fine-tune top 2 stages, lr_decay {decay}, bn_train {bn}, batch 8: {acc:.3f}")
    print(f"[{time.perf_counter() - start:.0f} s]")
    start = time.perf_counter()
    for seed, (s, accs) in t.lr_finder_runs(backbone, train_ds, val_ds).items():
        print(f"seed {seed}: lr_find suggestion (valley) {s:.2e}: " + ", ".join(f"{f}x -> {a:.3f}" for f, a in accs.items()))
    print(f"[{time.perf_counter() - start:.0f} s]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", action="store_true")
    p.add_argument("--step", action="store_true")
    p.add_argument("--claims", action="store_true")
    p.add_argument("--weights", default="synthetic", help="synthetic (default) or none")
    a = p.parse_args()
    if a.step:
        step()
    if a.build:
        build()
    if a.claims:
        claims(None if a.weights == "none" else a.weights)


if __name__ == "__main__":
    main()
