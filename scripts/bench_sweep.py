"""Wall time of a 2-job sweep run one job after another (Hydra's basic launcher) versus side by side (joblib).

    python scripts/bench_sweep.py [--epochs 2] [--image-size 96] [--out bench_sweep.json] [hydra overrides...]

Both sweeps are the same command, `python -m lungcnn.train -m experiment=demo seed=0,1 ...`, run as a user runs it
(a subprocess each, imports included); the parallel one adds `hydra/launcher=joblib`, whose jobs take one core each
(lungcnn/sweeps/resources.py). Prints both wall times, their ratio (goal: <= 0.8) and the largest difference between
the two runs' per-job metrics (metrics.json), plus the load average before and after, because the machine may be
shared: the ratio is what this one run measured. `--repeats 2` times each sweep twice in the order sequential,
parallel, parallel, sequential (so a load that drifts during the run weighs on both alike) and reports medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEEDS = ("0", "1")


def run_sweep(launcher: list[str], sweep_dir: Path, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "lungcnn.train", "-m", *launcher, "experiment=demo", f"seed={','.join(SEEDS)}",
           f"hydra.sweep.dir={sweep_dir}", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           *overrides]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(launcher) or 'basic launcher'}):\n{done.stderr[-3000:]}")
    return elapsed


def job_metrics(sweep_dir: Path) -> list[dict[str, float]]:
    out = []
    for job in range(len(SEEDS)):
        result = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        out.append({f"{split}/{k}": v for split in ("val", "test") for k, v in result.get(split, {}).items()})
    return out


def max_difference(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if not (math.isnan(x[k]) and math.isnan(y[k]))]
    return max(diffs, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job (stage 1: one of them)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=1, help="times each sweep (ABBA order), medians reported")
    args, overrides = parser.parse_known_args()
    overrides = [f"trainer.max_epochs={args.epochs}", "callbacks.finetune.stage1_epochs=1",
                 f"data.image_size={args.image_size}", *overrides]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        # Both launchers read the same demo data; make it once so neither sweep pays for generating it.
        run_sweep([], Path(tmp) / "warmup", ["trainer.fast_dev_run=true", "seed=0"])
        launchers = {"sequential": [], "parallel": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}
        times: dict[str, list[float]] = {"sequential": [], "parallel": []}
        for i in range(args.repeats):
            for name in ("sequential", "parallel") if i % 2 == 0 else ("parallel", "sequential"):
                times[name].append(run_sweep(launchers[name], Path(tmp) / f"{name}{i}", overrides))
        diff = max_difference(job_metrics(Path(tmp) / "sequential0"), job_metrics(Path(tmp) / "parallel0"))
    sequential, parallel = statistics.median(times["sequential"]), statistics.median(times["parallel"])
    figures = {"sequential_s": round(sequential, 1), "parallel_s": round(parallel, 1),
               "times_s": {k: [round(t, 1) for t in v] for k, v in times.items()},
               "ratio": round(parallel / sequential, 3), "max_metric_difference": diff, "cores": os.cpu_count(),
               "load_before": [round(x, 2) for x in load_before],
               "load_after": [round(x, 2) for x in os.getloadavg()], "overrides": overrides}
    print(f"2-job sweep, basic launcher (sequential): {sequential:.1f} s  (runs: {figures['times_s']['sequential']})")
    print(f"2-job sweep, joblib launcher (2 at once): {parallel:.1f} s  (runs: {figures['times_s']['parallel']})")
    print(f"ratio parallel / sequential: {parallel / sequential:.3f} (goal <= 0.8)")
    print(f"largest per-job metric difference between the two: {diff:.2e}")
    print(f"load average before {figures['load_before']}, after {figures['load_after']} on {os.cpu_count()} cores")
    if args.out:
        from lungcnn.fileio import write_json

        write_json(args.out, figures)


if __name__ == "__main__":
    main()
