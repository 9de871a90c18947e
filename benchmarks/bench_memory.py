"""Peak memory (RSS) and time of a whole `run`, and the feature cache's reuse on a second identical run.

    python benchmarks/bench_memory.py                 # the cpu profile on synthetic data, twice
    python benchmarks/bench_memory.py --repeat 1 -- run --profile smoke --quiet

Each run is a child process `python -m cifar_tl ...`; its peak resident set size comes from
os.wait4 (the kernel's ru_maxrss of that child alone). The runs share one fresh data folder
(CIFAR_TL_DATA), so the first extracts the features and the second must find them in the cache:
the script prints each run's metrics.json `seconds` and the second run's extract stage as a
fraction of the first's. The default run uses random weights (--weights none) so that it needs no
download: the arithmetic, and so the time and memory, are those of the ImageNet weights.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["run", "--profile", "cpu", "--source", "synthetic", "--weights", "none", "--quiet"]
LIMIT_GB = 6.0


def run_once(args: list[str], out: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "cifar_tl", *args, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    return {"command": " ".join(["python", "-m", "cifar_tl", *args, "--out", str(out)]),
            "returncode": proc.returncode, "wall_seconds": seconds,
            "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # Linux reports kilobytes
            "seconds": metrics.get("seconds", {}), "test_accuracy": metrics.get("test_accuracy"),
            "cache": metrics.get("cache"), "output_tail": output.strip().splitlines()[-3:]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=2, help="identical runs in one data folder")
    p.add_argument("--data-root", help="data folder shared by the runs (default: a fresh temp folder)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("cli", nargs=argparse.REMAINDER, help="arguments after --, for python -m cifar_tl")
    a = p.parse_args(argv)
    cli = [x for x in a.cli if x != "--"] or DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CIFAR_TL_DATA": a.data_root or str(Path(tmp) / "data"),
               "TORCH_HOME": os.environ.get("TORCH_HOME", str(Path(tmp) / "torch"))}
        load = os.getloadavg()
        policy = os.environ.get("OMP_WAIT_POLICY", "default")
        print(f"python -m cifar_tl {' '.join(cli)}  (x{a.repeat}, CIFAR_TL_DATA={env['CIFAR_TL_DATA']}; "
              f"OMP_WAIT_POLICY {policy}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", flush=True)
        results = []
        for i in range(a.repeat):
            r = run_once(cli, Path(tmp) / f"run{i + 1}", env)
            results.append(r)
            hit = [v.get("hit") for v in (r["cache"] or {}).values()]
            print(f"run {i + 1}: exit {r['returncode']}, {r['wall_seconds']:.1f} s wall, peak RSS "
                  f"{r['peak_rss_gb']:.2f} GB (limit {LIMIT_GB:g} GB: {'ok' if r['peak_rss_gb'] < LIMIT_GB else 'OVER'}), "
                  f"cache hits {hit}, test accuracy {r['test_accuracy']}", flush=True)
            print(f"       seconds per stage: {r['seconds']}", flush=True)
            if r["returncode"] != 0:
                print("\n".join(r["output_tail"]))
                break
    if len(results) >= 2 and results[0]["seconds"].get("extract"):
        first, second = results[0]["seconds"]["extract"], results[1]["seconds"].get("extract", float("nan"))
        print(f"extract stage, second run / first run: {second:.2f} s / {first:.2f} s = {second / first:.1%} "
              f"(goal under 10%)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
