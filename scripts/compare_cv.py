"""Compare cross-validated K-class configurations on the same folds: each one's pooled figures and its
difference from the first (the baseline), with paired series-bootstrap 95% intervals.

Every variant must have been cross-validated on the same folds (same seed, data and grouping), so each
image was a test image exactly once in every variant. A paired bootstrap resamples whole series once
and scores every variant on that same resample; the interval of a difference is then much narrower
than the two separate intervals suggest, and a change "helps" only if its difference interval
excludes 0.

    python scripts/compare_cv.py base=outputs/cv/base "flip TTA=outputs/cv/base:report_tta" \\
        "lung crop=outputs/cv/crop" --markdown

NAME=MULTIRUN_DIR[:REPORT_DIR] (report folder per fold, default "report"); calibrated probabilities
with each fold's recorded decision rule, as `scripts/aggregate_cv.py` pools them.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.cli import friendly_errors
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.bootstrap import group_resample_indices
from lungcnn.fileio import write_json

METRICS = ("balanced_accuracy", "auc/benign_vs_normal", "sensitivity/benign", "auc/malignant_vs_benign")


@functools.cache
def _aggregate_cv():
    """scripts/aggregate_cv.py as a module (scripts/ is no package), loaded once per process."""
    spec = importlib.util.spec_from_file_location("aggregate_cv", Path(__file__).with_name("aggregate_cv.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_variant(spec: str) -> tuple[str, pd.DataFrame]:
    """NAME=DIR[:REPORT] -> (name, pooled predictions of all folds, with group and decision weights)."""
    name, sep, where = spec.partition("=")
    if not sep or not name or not where:
        raise LungCNNInputError(f"expected NAME=MULTIRUN_DIR[:REPORT_DIR], got {spec!r}")
    directory, _, report = where.partition(":")
    cv = _aggregate_cv()
    runs = [cv.load_run(d, report or "report") for d in cv.find_runs(directory)]
    missing = [r["dir"] for r in runs if r["predictions"] is None]
    if missing:
        raise LungCNNInputError(f"{name}: {len(missing)} fold(s) lack {report or 'report'}/predictions.csv, e.g. {missing[0]}")
    frame = cv.pool_predictions(runs)
    if not cv.class_names(frame):
        raise LungCNNInputError(f"{name}: not K-class predictions (p_<class> columns expected)")
    if frame["file"].duplicated().any():
        raise LungCNNInputError(f"{name}: an image is in several test folds; not one cross-validation")
    return name, frame.set_index("file")


def compare(specs: list[str], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    variants = [load_variant(s) for s in specs]
    base_name, base = variants[0]
    files = base.index
    for name, frame in variants[1:]:
        if set(frame.index) != set(files):
            raise LungCNNInputError(f"{name} and {base_name} tested different images: not the same folds")
    cv = _aggregate_cv()
    pools = [cv.multiclass_arrays(frame.loc[files].reset_index()) for _, frame in variants]
    resamples = group_resample_indices(pools[0].labels, base["group"].to_numpy(str), n_resamples, seed)
    everything = np.arange(len(files))
    out: dict[str, Any] = {"baseline": base_name, "n": len(files), "n_series": int(base["group"].nunique()),
                           "bootstrap": {"n_resamples": n_resamples, "seed": seed, "unit": "series", "paired": True},
                           "variants": {}}
    samples = [[pool.score(idx) for idx in resamples] for pool in pools]
    points = [pool.score(everything) for pool in pools]
    for (name, _), point, rows in zip(variants, points, samples):
        entry = {}
        for key in METRICS:
            values = np.array([r[key] for r in rows])
            diffs = values - np.array([r[key] for r in samples[0]])
            entry[key] = {"value": point[key], "ci95": _interval(values),
                          "difference": point[key] - points[0][key], "difference_ci95": _interval(diffs)}
        out["variants"][name] = entry
    return out


def _interval(values: np.ndarray) -> list[float]:
    v = values[~np.isnan(values)]
    return [float(x) for x in np.percentile(v, [2.5, 97.5])] if v.size else [math.nan, math.nan]


def markdown(result: dict[str, Any]) -> str:
    head = "| change | " + " | ".join(f"{m} (95% CI)" for m in METRICS) + " |"
    lines = [head, "|---" * (len(METRICS) + 1) + "|"]
    for name, entry in result["variants"].items():
        cells = []
        for key in METRICS:
            c = entry[key]
            text = f"{c['value']:.3f} ({c['ci95'][0]:.3f}–{c['ci95'][1]:.3f})"
            if name != result["baseline"]:
                lo, hi = c["difference_ci95"]
                text += f"<br>Δ {c['difference']:+.3f} ({lo:+.3f} to {hi:+.3f})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare_cv.py", description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="NAME=MULTIRUN_DIR[:REPORT_DIR]; the first is the baseline")
    p.add_argument("--out", help="write the comparison as JSON")
    p.add_argument("--n-resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    return p


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = compare(args.variants, args.n_resamples, args.seed)
    print(markdown(result), flush=True)
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
