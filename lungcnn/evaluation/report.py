"""The test report: every number with a bootstrap interval, next to the paper's, in JSON and Markdown.

report.json is the machine-readable record (NaN is written as null so it is strict JSON and the returned
dict equals what is on disk); report.md is for people; predictions.csv lets anyone recompute everything.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.plots import (
    DEFAULT_CLASS_NAMES,
    plot_confusion,
    plot_histogram,
    plot_reliability,
    plot_roc,
)
from lungcnn.fileio import plain, write_json, write_text
from lungcnn.metrics.bootstrap import bootstrap_ci, clopper_pearson
from lungcnn.metrics.classification import METRIC_KEYS, binary_metrics, check_binary

# Test-set figures reported by the paper we reproduce (its own split, n = 162 images).
PAPER = {
    "accuracy": 0.9938, "precision": 0.9908, "sensitivity": 1.0, "specificity": 0.9815, "f1": 0.9954,
    "roc_auc": 0.9935, "n": 162,
}

ALPHA = 0.05
PLOTS = {"roc": "roc.png", "reliability": "reliability.png", "confusion": "confusion.png",
         "histogram": "histogram.png"}
_LABELS = {
    "accuracy": "Accuracy", "precision": "Precision (PPV)", "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity", "f1": "F1", "roc_auc": "ROC AUC", "brier": "Brier score",
    "nll": "Log loss (NLL)", "ece": "ECE (15 bins)", "mce": "MCE (15 bins)",
}
_CALIBRATION_KEYS = ("roc_auc", "brier", "nll", "ece", "mce")
_METHODS = {"temperature": "temperature scaling", "isotonic": "isotonic regression", "none": "no calibration"}


def build_report(
    records: Mapping[str, Any],
    *,
    threshold_calibrated: float,
    temperature: float | None,
    method: str,
    out_dir: str | os.PathLike,
    title: str,
    data_note: str,
    seed: int = 0,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Evaluate {uncalibrated, calibrated} probabilities x {0.5, threshold_calibrated}, write report.json,
    report.md and four PNGs into out_dir (lungcnn.evaluate writes
    predictions.csv beside them), and return the report dict (== report.json).

    `records` maps file, label, logit, prob (uncalibrated) and prob_cal (calibrated) to equal-length arrays.
    """
    files, y, logit, prob, prob_cal = _check_records(records)
    t_cal = float(threshold_calibrated)
    if not 0.0 <= t_cal <= 1.0:
        raise LungCNNInputError(f"threshold_calibrated must be in [0, 1], got {threshold_calibrated}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    for kind, p in (("uncalibrated", prob), ("calibrated", prob_cal)):
        results[kind] = {}
        for name, t in (("threshold_0.5", 0.5), ("threshold_calibrated", t_cal)):
            fn = functools.partial(binary_metrics, threshold=t)
            ci = bootstrap_ci(fn, p, y, n_resamples=n_resamples, seed=seed, alpha=ALPHA, stratified=True)
            m = fn(p, y)
            results[kind][name] = {"threshold": t, "metrics": m, "ci95": {k: list(v) for k, v in ci.items()},
                                   "exact_ci95": _exact_intervals(m["confusion"])}

    deployed = results["calibrated"]["threshold_calibrated"]["metrics"]["confusion"]
    cm = [[deployed["tn"], deployed["fp"]], [deployed["fn"], deployed["tp"]]]
    plot_roc(prob_cal, y, out / PLOTS["roc"], thresholds=sorted({0.5, t_cal}))
    plot_reliability(prob, prob_cal, y, out / PLOTS["reliability"])
    plot_confusion(cm, DEFAULT_CLASS_NAMES, out / PLOTS["confusion"],
                   title=f"Calibrated probability >= {t_cal:.3f}")
    plot_histogram(prob_cal, y, out / PLOTS["histogram"], DEFAULT_CLASS_NAMES,
                   thresholds=sorted({0.5, t_cal}))

    report = plain({
        "title": title,
        "data_note": data_note,
        "n": int(y.size),
        "n_malignant": int(y.sum()),
        "n_benign": int(y.size - y.sum()),
        "calibration": {"method": method, "temperature": temperature},
        "threshold_calibrated": t_cal,
        "decision_rule": "calibrated probability >= threshold -> malignant",
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "alpha": ALPHA, "stratified": True,
                      "interval": "percentile"},
        "paper": PAPER,
        "results": results,
        "files": {"json": "report.json", "markdown": "report.md", "predictions": "predictions.csv",
                  "plots": PLOTS},
    })
    write_json(out / "report.json", report)
    write_text(out / "report.md", _markdown(report))
    return report


def _markdown(r: dict[str, Any]) -> str:
    cal = r["results"]["calibrated"]
    unc = r["results"]["uncalibrated"]
    t = r["threshold_calibrated"]
    c = r["calibration"]
    method = _METHODS.get(c["method"], str(c["method"]))
    if isinstance(c["temperature"], (int, float)) and c["method"] == "temperature":
        method += f" (T = {c['temperature']:.3f})"
    bs = r["bootstrap"]
    intro = (
        f"Evaluated on **{r['n']} test images** ({r['n_malignant']} malignant, {r['n_benign']} benign). "
        f"Intervals are 95% percentile intervals from a stratified bootstrap ({bs['n_resamples']} resamples "
        f"drawn within each class, seed {bs['seed']}). Probabilities are calibrated with {method}; "
        "an image is called malignant when its calibrated probability is >= the threshold."
    )
    caveat = (
        f"The paper's figures come from its own test split (n = {PAPER['n']}); with n = {r['n']} here the "
        "columns are not a like-for-like comparison, and the intervals show how far our numbers could move."
    )
    lines = [
        f"# {r['title']}",
        "",
        intro,
        "",
        "> This model is **decision support, not a diagnosis**: a clinician must review every result.",
        "",
        f"Data: {r['data_note']}",
        "",
        caveat,
        "",
        "## Results (calibrated probabilities)",
        "",
        f"| Metric | Ours, threshold 0.500 (95% CI) | Ours, threshold {t:.3f} (95% CI) | Paper |",
        "|---|---|---|---|",
    ]
    for k in METRIC_KEYS:
        paper = f"{PAPER[k]:.4f}" if k in PAPER else "—"
        cells = [_LABELS[k], _cell(cal["threshold_0.5"], k), _cell(cal["threshold_calibrated"], k), paper]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| Test images | {r['n']} | {r['n']} | {PAPER['n']} |")
    lines += ["", "Confusion counts, with exact (Clopper–Pearson) 95% intervals:", ""]
    for name in ("threshold_0.5", "threshold_calibrated"):
        cf, ex = cal[name]["metrics"]["confusion"], cal[name]["exact_ci95"]
        lines.append(f"- threshold {cal[name]['threshold']:.3f}: TP {cf['tp']}, FP {cf['fp']}, "
                     f"TN {cf['tn']}, FN {cf['fn']}; sensitivity {_interval(ex['sensitivity'])}, "
                     f"specificity {_interval(ex['specificity'])}")
    lines += [
        "",
        (
            "A bootstrap interval of zero width (e.g. 1.000 (1.000–1.000) when no malignant image is missed) "
            "only means no resample differed; it is not certainty. The exact intervals above do not have "
            "that blind spot."
        ),
    ]
    lines += [
        "",
        "## Calibration (threshold-free)",
        "",
        "| Metric | Uncalibrated (95% CI) | Calibrated (95% CI) |",
        "|---|---|---|",
    ]
    for k in _CALIBRATION_KEYS:
        lines.append(f"| {_LABELS[k]} | {_cell(unc['threshold_0.5'], k)} | {_cell(cal['threshold_0.5'], k)} "
                     "|")
    lines += [
        "",
        (
            "Lower is better for Brier, log loss, ECE and MCE. Binned ECE/MCE are biased upwards on "
            "resamples, so their intervals tend to sit above the point estimate. All four combinations "
            "(uncalibrated / calibrated probabilities x threshold 0.5 / calibrated threshold), with "
            "intervals, are in `report.json`; per-image predictions are in `predictions.csv`."
        ),
        "",
        "## Figures",
        "",
        f"![ROC curve]({PLOTS['roc']})",
        "",
        f"![Reliability diagram before and after calibration]({PLOTS['reliability']})",
        "",
        f"![Confusion matrix at threshold {t:.3f}]({PLOTS['confusion']})",
        "",
        f"![Histogram of calibrated probabilities]({PLOTS['histogram']})",
        "",
    ]
    return "\n".join(lines)


def _interval(iv: list[float | None]) -> str:
    lo, hi = iv
    return "n/a" if lo is None or hi is None else f"{lo:.3f}–{hi:.3f}"


def _exact_intervals(cf: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    """Clopper–Pearson intervals for sensitivity and specificity (NaN where the class is absent)."""
    return {
        "sensitivity": clopper_pearson(cf["tp"], cf["tp"] + cf["fn"]),
        "specificity": clopper_pearson(cf["tn"], cf["tn"] + cf["fp"]),
    }


def _cell(entry: dict[str, Any], key: str) -> str:
    v = entry["metrics"][key]
    lo, hi = entry["ci95"].get(key, (None, None))
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{v:.3f}"
    return f"{v:.3f} ({lo:.3f}–{hi:.3f})"


def _check_records(
    records: Mapping[str, Any],
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = [k for k in ("file", "label", "logit", "prob", "prob_cal") if k not in records]
    if missing:
        raise ValueError(f"records is missing {missing}; expected file, label, logit, prob, prob_cal")
    files = [str(f) for f in records["file"]]
    prob, y = check_binary(records["prob"], records["label"])
    prob_cal, _ = check_binary(records["prob_cal"], y)
    logit = np.asarray(records["logit"], dtype=np.float64)
    if logit.shape != y.shape or len(files) != y.size:
        raise ValueError(f"records arrays differ in length: file {len(files)}, label {y.size}, "
                         f"logit {logit.shape}")
    return files, y, logit, prob, prob_cal
