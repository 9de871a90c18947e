"""CPU speed of the torch paths alone and beside two busy processes, per OpenMP setting.

    python benchmarks/bench_busy.py                          # today's default against the package's
    python benchmarks/bench_busy.py --settings all --rounds 3

Each setting runs in its own child process, with its environment set before torch is imported
(OpenMP reads it once, when torch loads it). A child times three paths for about ``--seconds``
each after a warm-up:

- extract: ``features.extract`` of efficientnet_v2_s (random weights), 64 px, both views, the
  default batch (32 images): the extract stage of
  ``run --engine torch --precision fp32 --image-size 64``. Images/s (one image = both views).
- finetune: one fine-tuning step (the smoke profile's model, top 2 stages unfrozen, 64 px, batch 8,
  channels_last, forward + backward + AdamW). Images/s.
- head: the tutorial's head (1280 -> 256 -> 256 -> 100, Adam) on random cached features at batch 8
  (``engine.train_one_epoch`` over a ``FeatureLoader``), on 2 threads and on 1 (the library's
  choice, ``threads.head_threads``). Steps/s.

"busy" starts two ``python -c "while True: pass"`` processes for the child's whole life (the
machine has 2 cores: the fair share is a third). Settings and conditions are interleaved round
by round, so that other jobs on a shared machine slow each alike; the medians are printed, with
the load average before each round. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNSET = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
TORCH_FIRST = "BENCH_BUSY_TORCH_FIRST"

# name -> environment of the child (on top of the parent's, with UNSET removed). "today" imports
# torch before cifar_tl, so nothing the package sets can reach OpenMP: the default wait policy of
# every run before the package set one (and of a notebook that imports torch first). "package" is
# what `import cifar_tl` sets when the user set nothing (cifar_tl/threads.py).
SETTINGS = {
    "today": {TORCH_FIRST: "1"},
    "package": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "SPIN=0": {"GOMP_SPINCOUNT": "0"},
    "SPIN=1000": {"GOMP_SPINCOUNT": "1000"},
    "SPIN=5000": {"GOMP_SPINCOUNT": "5000"},
    "SPIN=10000": {"GOMP_SPINCOUNT": "10000"},
    "SPIN=20000": {"GOMP_SPINCOUNT": "20000"},
    "SPIN=50000": {"GOMP_SPINCOUNT": "50000"},
    "SPIN=200000": {"GOMP_SPINCOUNT": "200000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}
DEFAULT = ("today", "package")


# --------------------------------------------------------------------------- the child
def _timed(step, seconds: float, warmup: int = 1) -> tuple[int, float]:
    """Run step() (it returns how many items it did) until ``seconds`` have passed: (items, s)."""
    for _ in range(warmup):
        step()
    items, t0 = 0, time.perf_counter()
    while True:
        items += step()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return items, elapsed


def child(seconds: float, paths: list[str]) -> None:
    """Prints one JSON line per path as it is done (a parent that runs out of time keeps those)."""
    if os.environ.get(TORCH_FIRST):
        import torch
    import cifar_tl  # noqa: F401, I001  (as a user's `import cifar_tl`: sets the package's defaults, if it still can)
    import torch

    from cifar_tl import engine, features, finetune
    from cifar_tl.config import Config
    from cifar_tl.models import MLPHead, TransferModel, build_backbone

    def report(**values) -> None:
        print(json.dumps(values), flush=True)

    torch.manual_seed(0)
    report(threads=torch.get_num_threads(),
           env={k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS") if k in os.environ})

    if "head" in paths:
        feats, targets = torch.randn(80, 2, 1280), torch.randint(0, 100, (80,))  # 10 steps an epoch
        head = MLPHead(1280, 100, hidden=(256, 256))
        hopt = engine.make_optimizer(head)
        loader = features.FeatureLoader(feats, targets, 8, train=True, seed=0)
        loss_fn = torch.nn.CrossEntropyLoss()

        def head_epoch() -> int:
            # __wrapped__: the loop itself, on the threads set here (the library's runs a head on one)
            engine.train_one_epoch.__wrapped__(head, loader, hopt, loss_fn, "cpu", progress=False)
            return len(loader)

        before = torch.get_num_threads()
        for threads in sorted({before, 1}, reverse=True):
            torch.set_num_threads(threads)
            n, s = _timed(head_epoch, seconds / 2)
            report(**{f"head_{threads}t": n / s})
        torch.set_num_threads(before)

    if "extract" in paths:
        bb = build_backbone("efficientnet_v2_s", weights=None)
        images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
        n, s = _timed(lambda: len(features.extract(bb, images, 64, "cpu", features.VIEWS_TRAIN, progress=False)),
                      seconds)
        report(extract=n / s)

    if "finetune" in paths:
        cfg = Config.for_profile("smoke", image_size=64, progress=False)
        model = TransferModel.from_config(cfg, num_classes=100)
        finetune.unfreeze(model.backbone, 2)
        model.to(memory_format=torch.channels_last).train()
        opt = finetune.make_optimizer(model, 1e-3, cfg.lr_decay, 0.01)
        x = torch.randn(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 100, (8,))

        def ft_step() -> int:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return len(y)

        n, s = _timed(ft_step, seconds)
        report(finetune=n / s)


# --------------------------------------------------------------------------- the parent
def run_child(setting: str, busy: bool, seconds: float, limit: float, paths: str) -> dict:
    """The child's figures; a path not done within ``limit`` seconds is missing (too slow to time)."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(SETTINGS[setting], PYTHONPATH=str(ROOT))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if busy else 0)]
    child_ = subprocess.Popen([sys.executable, __file__, "--child", "--seconds", str(seconds), "--paths", paths], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    got: dict = {"timed_out": False}
    try:
        out, _ = child_.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        child_.kill()
        out, _ = child_.communicate()
        got["timed_out"] = True
    finally:
        for p in [*hogs, child_]:
            p.kill()
            p.wait()
    for line in out.splitlines():
        if line.startswith("{"):
            got.update(json.loads(line))
    if "threads" not in got:
        raise SystemExit(f"{setting}: the child failed (exit {child_.returncode}); run it alone: "
                         f"python {__file__} --child")
    return got


PATHS = (("extract", "images/s"), ("finetune", "images/s"), ("head_2t", "steps/s"), ("head_1t", "steps/s"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", default=",".join(DEFAULT),
                   help=f"comma-separated names, or 'all': {', '.join(SETTINGS)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per path in each child")
    p.add_argument("--limit", type=float, default=300.0,
                   help="seconds a child may take in all; paths it has not done by then are shown as '-'")
    p.add_argument("--paths", default="head,extract,finetune", help="which of head, extract, finetune to time")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.seconds, a.paths.split(","))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the busy processes end too
    names = list(SETTINGS) if a.settings == "all" else a.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    import platform

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; settings {names}; "
          f"{a.rounds} rounds of {a.seconds:g} s per path", flush=True)
    got: dict = {}
    for r in range(a.rounds):
        load = os.getloadavg()
        print(f"round {r + 1}: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        for name in names:
            for busy in (False, True):
                res = run_child(name, busy, a.seconds, a.limit, a.paths)
                got.setdefault((name, busy), []).append(res)
                print(f"  {name:12s} {'busy' if busy else 'idle'}: "
                      + ", ".join(f"{k} {_fmt(res.get(k))}" for k, _ in PATHS if k in res)
                      + f"  ({res['threads']} threads, {res['env']}{', timed out' if res['timed_out'] else ''})",
                      flush=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    # A path a child did not finish counts as 0 in the median: its speed was below what was timed.
    timed = [(k, unit) for k, unit in PATHS if k.split("_")[0] in a.paths.split(",")]
    med = {key: {k: statistics.median(r.get(k, 0.0) for r in rows) for k, _ in timed} for key, rows in got.items()}
    base = names[0]
    print(f"\nmedians over {a.rounds} rounds; busy = beside two `while True: pass` processes; "
          f"'idle vs {base}' = this setting's idle speed / {base}'s idle speed")
    print(f"| setting | path | idle | busy | busy, % of its idle | idle vs {base} |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for k, unit in timed:
            idle, busy = med[(name, False)][k], med[(name, True)][k]
            print(f"| {name} | {k} | {_fmt(idle)} {unit} | {_fmt(busy)} | {_pct(busy, idle)} | "
                  f"{_pct(idle, med[(base, False)][k])} |")


def _fmt(x) -> str:
    return "-" if not x else f"{x:.1f}"


def _pct(a, b) -> str:
    return f"{100 * a / b:.0f}%" if a and b else "-"


if __name__ == "__main__":
    main()
