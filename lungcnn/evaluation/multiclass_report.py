"""The K-class test report (normal / benign / malignant): the same honesty as the binary report.

Balanced accuracy, macro F1, per-class sensitivity / specificity / one-vs-rest ROC-AUC, top-label ECE,
and the pairwise AUC of every two classes (benign vs normal is the clinically hard one), each with a
stratified-bootstrap 95% interval; confusion matrix and per-class reliability diagrams as PNG;
report.json and report.md (lungcnn.evaluate writes predictions.csv beside them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from lungcnn.evaluation.plots import plot_confusion, plot_reliability
from lungcnn.fileio import plain, write_json, write_text
from lungcnn.metrics.bootstrap import bootstrap_ci
from lungcnn.metrics.classification import multiclass_metrics
from lungcnn.spec import DecisionRule

ALPHA = 0.05


def pairwise_auc(probs: np.ndarray, labels: np.ndarray, a: int, b: int) -> float:
    """AUC of class b against class a among images of those two classes, scored by P(b) / (P(a) + P(b))."""
    mask = (labels == a) | (labels == b)
    if len(np.unique(labels[mask])) < 2:
        return math.nan
    pa, pb = probs[mask, a], probs[mask, b]
    return float(roc_auc_score(labels[mask] == b, pb / np.maximum(pa + pb, 1e-12)))


def flat_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                 decisions: np.ndarray | None = None) -> dict[str, float]:
    """Every figure as one flat float, so each gets a bootstrap interval; `decisions` as in `multiclass_metrics`.

    The last class (malignant) comes first: its sensitivity is the figure a clinician reads first.
    """
    m = multiclass_metrics(probs, labels, class_names, decisions)
    cancer = class_names[-1]
    flat = {f"sensitivity/{cancer}": m["per_class"][cancer]["sensitivity"]}
    flat.update({k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece")})
    for name, per in m["per_class"].items():
        for key in ("sensitivity", "specificity", "roc_auc"):
            flat[f"{key}/{name}"] = per[key]
    for a, b in itertools.combinations(range(len(class_names)), 2):
        flat[f"auc/{class_names[b]}_vs_{class_names[a]}"] = pairwise_auc(probs, labels, a, b)
    return flat


def build_multiclass_report(records: dict[str, Any], *, class_names: Sequence[str], temperature: float, out_dir: str | Path,
                            title: str, data_note: str, rule: DecisionRule, seed: int = 0, n_resamples: int = 1000,
                            tta: str = "none") -> dict[str, Any]:
    """`records`: file, label (N,), prob (N, K) uncalibrated, prob_cal (N, K) calibrated, decision (N,) the
    checkpoint's decisions (class indices) under `rule`; uncalibrated decisions are the plain argmax of the
    class-balanced network's output. Intervals resample images (rows keep their decisions).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(records["label"], dtype=np.int64)
    names = list(class_names)
    rows = np.arange(y.size)
    results = {}
    for kind, key, decided in (("uncalibrated", "prob", None), ("calibrated", "prob_cal", records["decision"])):
        p = np.asarray(records[key], dtype=np.float64)
        d = p.argmax(axis=1) if decided is None else np.asarray(decided, dtype=np.int64)

        def score(idx: np.ndarray, _y: np.ndarray, p: np.ndarray = p, d: np.ndarray = d) -> dict[str, float]:
            return flat_metrics(p[idx], y[idx], names, d[idx])

        point = score(rows, y)
        ci = bootstrap_ci(score, rows, y, n_resamples=n_resamples, seed=seed, alpha=ALPHA)
        results[kind] = {k: {"value": v, "ci95": list(ci.get(k, (math.nan, math.nan)))} for k, v in point.items()}
    cal = np.asarray(records["prob_cal"], dtype=np.float64)
    confusion = multiclass_metrics(cal, y, names, records["decision"])["confusion_matrix"]
    rule_text = decision_rule_text(rule)
    plot_confusion(confusion, names, out / "confusion.png", title="Confusion matrix (the checkpoint's decisions)")
    for k, name in enumerate(names):
        plot_reliability(np.asarray(records["prob"])[:, k], cal[:, k], (y == k).astype(int), out / f"reliability_{name}.png")
    report = {
        "title": title, "data_note": data_note, "n": int(y.size),
        "class_counts": {name: int((y == k).sum()) for k, name in enumerate(names)},
        "class_names": names, "calibration": {"method": "temperature", "temperature": temperature},
        "decision_rule": rule_text, "decision": {"threshold": rule.threshold, "weights": rule.weights,
                                                 "priority": rule.priority}, "tta": tta,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "alpha": ALPHA, "stratified": True},
        "confusion_matrix": confusion, "results": plain(results),
    }
    write_json(out / "report.json", report)
    write_text(out / "report.md", _markdown(report))
    return report


def decision_rule_text(rule: DecisionRule) -> str:
    """The decision rule in one phrase, for reports."""
    weighted = ""
    if rule.weighted:
        shown = ", ".join(f"{w:.2f}" for w in rule.weights)
        weighted = f"the highest calibrated probability times the class weight ({shown}; 1 / training prior: balanced)"
    if rule.priority is not None:
        rest = weighted or "the most probable of the other classes"
        return f"cancer first: {rule.priority} when P({rule.priority}) >= {rule.threshold:.3f}, else {rest}"
    return weighted or "the class with the highest calibrated probability"


def _fmt(cell: dict[str, Any]) -> str:
    v, (lo, hi) = cell["value"], cell["ci95"]
    if v is None:
        return "n/a"
    return f"{v:.3f} ({lo:.3f}–{hi:.3f})" if lo is not None else f"{v:.3f}"


def _markdown(r: dict[str, Any]) -> str:
    cal, unc = r["results"]["calibrated"], r["results"]["uncalibrated"]
    counts = ", ".join(f"{n} {c}" for n, c in r["class_counts"].items())
    lines = [
        f"# {r['title']}", "",
        f"Evaluated on **{r['n']} images** ({counts}). Decision: {r['decision_rule']}; temperature "
        f"T = {r['calibration']['temperature']:.3f}"
        + (f"; test-time augmentation: {r['tta']}" if r.get("tta", "none") != "none" else "") + ". Intervals: 95% stratified "
        f"bootstrap, {r['bootstrap']['n_resamples']} resamples, seed {r['bootstrap']['seed']}.", "",
        "> This model is **decision support, not a diagnosis**: a clinician must review every result.", "",
        f"Data: {r['data_note']}", "",
        "| Metric | Calibrated (95% CI) | Uncalibrated (95% CI) |", "|---|---|---|",
    ]
    lines += [f"| {k} | {_fmt(cal[k])} | {_fmt(unc[k])} |" for k in cal]
    lines += ["", "`auc/b_vs_a`: ROC-AUC of class b against class a among images of those two classes, scored by "
              "P(b) / (P(a) + P(b)).", "", "![Confusion matrix](confusion.png)", ""]
    lines += [f"![Reliability, {n} vs rest](reliability_{n}.png)" for n in r["class_names"]]
    return "\n".join(lines) + "\n"
