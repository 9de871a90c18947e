"""Fine-tuning on the CPU: the cost of one training step, and the learning-rate decay on smoke data.

    python benchmarks/bench_finetune.py step    # seconds and peak memory of a fine-tuning step
    python benchmarks/bench_finetune.py decay   # test accuracy after fine-tuning, per --lr-decay

`step`: efficientnet_v2_s (random weights), batch 8, K = 2 and all, at 64 and 160 px: forward,
backward and AdamW step, median of 5 after 2 warm-up steps; the peak resident memory of a fresh
process per case (ru_maxrss). `decay`: the smoke profile (efficientnet_v2_s, random, 64 px) on 400
train and 200 test images: the frozen head for 3 epochs against 1 head epoch + 2 epochs of the top
2 stages, per lr_decay, for 2 seeds. Prints figures; asserts nothing. Note `uptime` first.
"""

from __future__ import annotations

import copy
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from cifar_tl import Config, data, engine, features, finetune
from cifar_tl.models import TransferModel


def step_case(image_size: int, k: str, batch: int = 8) -> None:
    cfg = Config.for_profile("smoke", image_size=image_size, progress=False)
    model = TransferModel.from_config(cfg, num_classes=100)
    finetune.unfreeze(model.backbone, int(k) if k.isdigit() else k)
    model.to(memory_format=torch.channels_last).train()
    opt = finetune.make_optimizer(model, 1e-3, cfg.lr_decay, 0.01)
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,))
    times = []
    for i in range(7):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{image_size:4d} px  K={k:>3s}  {s * 1000:7.0f} ms/step  {batch / s:6.1f} images/s  "
          f"peak RSS {peak:6.0f} MB  trainable {trainable / 1e6:5.2f}M  threads {torch.get_num_threads()}")


def decay_sweep(decays=(0.3, 0.1, 0.01, 0.001), seeds=(0, 1), epochs: int = 3) -> None:
    """The smoke profile's backbone on 400/200 images: the frozen head for ``epochs`` epochs against
    1 head epoch + ``epochs - 1`` epochs of the top 2 stages and the head, per lr_decay."""
    for seed in seeds:
        cfg = Config.for_profile("smoke", train_size=400, test_size=200, seed=seed, progress=False)
        train_ds, test_ds = data.build_datasets(cfg)
        engine.seed_everything(seed)
        base = TransferModel.from_config(cfg, num_classes=len(train_ds.classes))
        tr_f, tr_y, _ = features.cached_features(cfg, train_ds, base.backbone, "cpu", features.VIEWS_TRAIN)
        te_f, te_y, _ = features.cached_features(cfg, test_ds, base.backbone, "cpu", features.VIEWS_TEST)
        base.head.standardizer.fit_stats(tr_f)
        loaders = (features.FeatureLoader(tr_f, tr_y, cfg.batch_size, True, seed),
                   features.FeatureLoader(te_f, te_y, 256, False))
        frozen = _head(copy.deepcopy(base), loaders, cfg, epochs)
        print(f"seed {seed}: frozen head, {epochs} epochs: {[round(r['test_accuracy'], 3) for r in frozen]}")
        for decay in decays:
            model = copy.deepcopy(base)
            rows = _head(model, loaders, cfg, 1)
            finetune.unfreeze(model.backbone, 2)
            t0 = time.perf_counter()
            rows += finetune.fine_tune(model, train_ds, test_ds, cfg.replace(lr_decay=decay), "cpu", epochs=epochs - 1)
            print(f"  lr_decay {decay:6.3f}: 1 head + {epochs - 1} fine-tune epochs: "
                  f"{[round(r['test_accuracy'], 3) for r in rows]}, {time.perf_counter() - t0:.0f} s", flush=True)


def _head(model, loaders, cfg, epochs: int) -> list[dict]:
    return engine.fit(model.head, *loaders, epochs=epochs, lr=cfg.lr, seed=cfg.seed, progress=False)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "step"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    if what == "case":
        step_case(int(sys.argv[2]), sys.argv[3])
    elif what == "step":
        for size in (64, 160):
            for k in ("2", "all"):  # a fresh process each: ru_maxrss is the peak of the process
                subprocess.run([sys.executable, __file__, "case", str(size), k], check=True)
    elif what == "decay":
        decay_sweep()


if __name__ == "__main__":
    main()
