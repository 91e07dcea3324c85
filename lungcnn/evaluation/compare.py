"""Compare cross-validated configurations on the same folds: each one's pooled figures and its difference
from the first (the baseline), with paired series-bootstrap 95% intervals.

Every variant must have been cross-validated on the same folds (same seed, data and grouping), so each
image was a test image exactly once in every variant. A paired bootstrap resamples whole series once
and scores every variant on that same resample; the interval of a difference is then much narrower
than the two separate intervals suggest, and a change "helps" only if its difference interval
excludes 0. Variants are NAME=MULTIRUN_DIR[:REPORT_DIR] (report folder per fold, default "report");
calibrated probabilities with each fold's recorded decision rule, pooled as `crossval` pools them. Images a
variant's domain guard flagged have no decision; the comparison pairs the images every variant judged and
counts the rest (`left_out_flagged`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import crossval
from lungcnn.evaluation.results import Predictions
from lungcnn.metrics.bootstrap import group_resample_indices

METRICS = ("balanced_accuracy", "auc/benign_vs_normal", "sensitivity/benign", "auc/malignant_vs_benign")
# Two classes: malignant sensitivity first (at each fold's operating threshold), then specificity, AUC, ECE.
BINARY_METRICS = ("sensitivity/malignant", "specificity/malignant", "auc/malignant_vs_benign", "ece")


def load_variant(spec: str) -> tuple[str, Predictions]:
    """NAME=DIR[:REPORT] -> (name, pooled predictions of all folds, ordered by file)."""
    name, sep, where = spec.partition("=")
    if not sep or not name or not where:
        raise LungCNNInputError(f"expected NAME=MULTIRUN_DIR[:REPORT_DIR], got {spec!r}")
    directory, _, report = where.partition(":")
    runs = [crossval.load_run(d, report or "report") for d in crossval.find_runs(directory)]
    missing = [r["dir"] for r in runs if r["predictions"] is None]
    if missing:
        raise LungCNNInputError(f"{name}: {len(missing)} fold(s) lack {report or 'report'}/predictions.csv, e.g. {missing[0]}")
    pool = crossval.pool_predictions(runs)
    if len(set(pool.files)) != len(pool.files):
        raise LungCNNInputError(f"{name}: an image is in several test folds; not one cross-validation")
    order = np.argsort(pool.files)
    return name, pool.rows(order)


def compare(specs: list[str], n_resamples: int = 1000, seed: int = 0,
            metrics: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Paired comparison of `specs` (NAME=DIR[:REPORT], the first is the baseline); `metrics` default by task."""
    variants = [load_variant(s) for s in specs]
    base_name, base = variants[0]
    metrics = metrics or (BINARY_METRICS if len(base.names) == 2 else METRICS)
    # Each variant's domain guard may flag other images (they have no decision): pair on images all judged.
    common = np.array(sorted(set.intersection(*(set(pool.files) for _, pool in variants))))
    for name, pool in variants[1:]:
        if 2 * common.size < max(len(pool.files), len(base.files)):
            raise LungCNNInputError(f"{name} and {base_name} share only {common.size} test images: not the same data")
    left_out = {name: int(len(pool.files) - common.size) for name, pool in variants}
    variants = [(name, pool.rows(np.isin(pool.files, common))) for name, pool in variants]
    base = variants[0][1]
    pools = [pool for _, pool in variants]
    resamples = group_resample_indices(base.labels, base.groups, n_resamples, seed)
    everything = np.arange(len(base.files))
    out: dict[str, Any] = {"baseline": base_name, "n": len(base.files), "n_series": int(len(set(base.groups))),
                           "left_out_flagged": left_out,
                           "bootstrap": {"n_resamples": n_resamples, "seed": seed, "unit": "series", "paired": True},
                           "variants": {}}
    samples = [[pool.score(idx) for idx in resamples] for pool in pools]
    points = [pool.score(everything) for pool in pools]
    for (name, _), point, rows in zip(variants, points, samples):
        entry = {}
        for key in metrics:
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
    metrics = list(next(iter(result["variants"].values())))
    head = "| change | " + " | ".join(f"{m} (95% CI)" for m in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for name, entry in result["variants"].items():
        cells = []
        for key in metrics:
            c = entry[key]
            text = f"{c['value']:.3f} ({c['ci95'][0]:.3f}–{c['ci95'][1]:.3f})"
            if name != result["baseline"]:
                lo, hi = c["difference_ci95"]
                text += f"<br>Δ {c['difference']:+.3f} ({lo:+.3f} to {hi:+.3f})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
