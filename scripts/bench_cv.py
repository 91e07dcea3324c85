"""Wall time of the repeated grouped CV (`python -m lungcnn.cv run`) with and without the feature cache, in one run.

Three runs of the same command into fresh folders: the cache off (`feature_cache.enabled=false`, every epoch runs
the frozen backbone), the cache on and empty (cold: the features are computed in the first fold), and the cache
on again with what the cold run left (warm: what every later comparison on the same images costs). Each run
trains, calibrates, evaluates and pools every fold, as the yardstick does. The small default setting (a synthetic
set, 1 repeat x 3 folds, 4 epochs, 64 px) takes a few minutes on 2 cores; pass --root, --repeats, --folds,
--epochs 0 (the recipe's own) and Hydra overrides for the real one.

    python scripts/bench_cv.py [--root DIR] [--repeats 1] [--folds 3] [--epochs 4] [--out bench_cv.json] [KEY=VALUE ...]
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

from lungcnn.fileio import write_json


def run_cv(out: Path, overrides: list[str], repeats: int, folds: int) -> float:
    cmd = [sys.executable, "-m", "lungcnn.cv", "run", str(out), "--repeats", str(repeats), "--folds", str(folds),
           "--n-resamples", "200", *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a dataset folder (default: a small synthetic set made here)")
    parser.add_argument("--experiment", default="iqothnccd", help="a frozen-backbone recipe (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="trainer.max_epochs (0: the experiment's own)")
    parser.add_argument("--runs", default="without_cache,cache_cold,cache_warm",
                        help="which of the three runs, comma-separated (default all; cold before warm)")
    parser.add_argument("--out", type=Path, help="write the timings as JSON")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for lungcnn.train")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_cv_") as tmp:
        work = Path(tmp)
        overrides = [f"experiment={args.experiment}", "trainer.enable_model_summary=false", *args.overrides]
        if args.epochs:
            overrides.append(f"trainer.max_epochs={args.epochs}")
        if args.root is None:
            from lungcnn.data.synthetic import make_synthetic_dataset

            args.root = make_synthetic_dataset(work / "data", n_patients={"benign": 8, "malignant": 12},
                                               slices_per_patient=4, image_size=64, seed=0)
            overrides.append("data.image_size=64")
        overrides.append(f"data.root={args.root}")
        cache = f"feature_cache.dir={work / 'cache'}"
        settings = {"without_cache": ["feature_cache.enabled=false"], "cache_cold": [cache, "feature_cache.enabled=true"],
                    "cache_warm": [cache, "feature_cache.enabled=true"]}  # in this order: warm reuses what cold wrote
        runs = args.runs.split(",")
        unknown = sorted(set(runs) - set(settings))
        if unknown:
            sys.exit(f"--runs: unknown {unknown}; choose from {sorted(settings)}")
        seconds = {name: run_cv(work / name, [*overrides, *extra], args.repeats, args.folds)
                   for name, extra in settings.items() if name in runs}
    result = {"seconds": seconds, "repeats": args.repeats, "folds": args.folds, "overrides": overrides,
              "threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    for name in ("cache_cold", "cache_warm"):
        if name in seconds and "without_cache" in seconds:
            result[f"speedup_{name.removeprefix('cache_')}"] = seconds["without_cache"] / seconds[name]
    print(json.dumps(result, indent=2))
    print(f"repeated CV {args.repeats} x {args.folds}: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
