"""Evaluation: metrics against scikit-learn and hand computation, bootstrap, plots and the report."""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import (
    PAPER,
    binary_metrics,
    bootstrap_ci,
    build_report,
    multiclass_metrics,
    plot_confusion,
    plot_histogram,
    plot_reliability,
    plot_roc,
)
from lungcnn.metrics.bootstrap import resample_indices
from lungcnn.metrics.classification import METRIC_KEYS, binary_metrics_batched

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_binary(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < 0.3 + 0.4 * p).astype(np.int64)  # informative but imperfect
    return p, y


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# --- binary metrics --------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_match_sklearn(threshold: float) -> None:
    p, y = _random_binary()
    m = binary_metrics(p, y, threshold=threshold)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert all(type(v) is int for v in m["confusion"].values())
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": tn / (tn + fp),
        "f1": skm.f1_score(y, pred),
        "roc_auc": skm.roc_auc_score(y, p),
        "brier": skm.brier_score_loss(y, p),
        "nll": skm.log_loss(y, p),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key
    assert set(m) == {*METRIC_KEYS, "confusion"}


def test_threshold_is_inclusive() -> None:
    # The project's rule is prob >= threshold -> malignant (torchmetrics alone would use >).
    m = binary_metrics(np.array([0.3, 0.3, 0.1, 0.9]), np.array([1, 0, 0, 1]), threshold=0.3)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 1, "fn": 0}


def test_ece_and_mce_equal_hand_computation() -> None:
    # 15 equal-width bins of width 1/15: 0.10, 0.12 -> bin 1 [0.067, 0.133); 0.42, 0.45 -> bin 6 [0.4, 0.467);
    # 0.90, 0.92 -> bin 13 [0.867, 0.933).
    p = np.array([0.10, 0.12, 0.42, 0.45, 0.90, 0.92])
    y = np.array([0, 1, 1, 0, 1, 1])
    gaps = [abs(0.5 - 0.11), abs(0.5 - 0.435), abs(1.0 - 0.91)]  # |fraction positive - mean prob| per bin
    m = binary_metrics(p, y)
    assert m["ece"] == pytest.approx(sum(2 / 6 * g for g in gaps), abs=1e-12)  # 0.181666...
    assert m["mce"] == pytest.approx(max(gaps), abs=1e-12)  # 0.39


def test_one_class_gives_nan_auc_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(np.array([0.2, 0.6, 0.9]), np.array([1, 1, 1]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(2 / 3)


def test_binary_metrics_reject_bad_input() -> None:
    with pytest.raises(LungCNNInputError):
        binary_metrics(np.array([0.2, 1.5]), np.array([0, 1]))  # logits, not probabilities
    with pytest.raises(ValueError) as caught:  # arrays of different lengths: a caller's bug, not bad input
        binary_metrics(np.array([0.2, 0.5]), np.array([0, 1, 1]))
    assert not isinstance(caught.value, LungCNNInputError)
    with pytest.raises(LungCNNInputError):
        binary_metrics(np.array([0.2, 0.5]), np.array([0, 1]), threshold=2.0)


def test_batched_fast_path_equals_binary_metrics() -> None:
    p, y = _random_binary(n=160, seed=2)
    p = np.round(p * 20) / 20  # ties (AUC tie handling) and exact 1.0 / bin edges (ECE binning)
    idx = resample_indices(y, 5, seed=4, stratified=False)
    idx = np.vstack([idx, np.flatnonzero(y == 1)[np.arange(160) % int(y.sum())]])  # a one-class resample
    for threshold in (0.5, 0.3):
        batched = binary_metrics_batched(p[idx], y[idx], threshold)
        for r, i in enumerate(idx):
            single = binary_metrics(p[i], y[i], threshold)
            for key in METRIC_KEYS:
                assert _close(float(batched[key][r]), single[key]), (key, r)


def test_multiclass_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 3))
    y = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    m = multiclass_metrics(probs, y, ["a", "b", "c"])
    pred = probs.argmax(axis=1)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    recalls = skm.recall_score(y, pred, average=None)
    for i, name in enumerate("abc"):
        assert m["per_class"][name]["sensitivity"] == pytest.approx(recalls[i])
        auc = skm.roc_auc_score(y == i, probs[:, i])
        assert m["per_class"][name]["roc_auc"] == pytest.approx(auc, abs=1e-6)
    assert 0 <= m["ece"] <= 1
    with pytest.raises(ValueError) as caught:  # names that do not match the columns: a caller's bug
        multiclass_metrics(probs, y, ["a", "b"])
    assert not isinstance(caught.value, LungCNNInputError)


# --- bootstrap -------------------------------------------------------------------------------------------

def test_bootstrap_is_deterministic_and_seed_dependent() -> None:
    p, y = _random_binary(n=160)
    fn = functools.partial(binary_metrics, threshold=0.5)
    a = bootstrap_ci(fn, p, y, n_resamples=300, seed=0)
    assert a == bootstrap_ci(fn, p, y, n_resamples=300, seed=0)
    assert a != bootstrap_ci(fn, p, y, n_resamples=300, seed=1)


def test_bootstrap_contains_point_estimate() -> None:
    p, y = _random_binary(n=160)
    point = binary_metrics(p, y)
    ci = bootstrap_ci(binary_metrics, p, y, n_resamples=1000, seed=0)
    assert set(ci) == set(METRIC_KEYS)
    # ECE/MCE are biased upwards under resampling (fewer points per bin), so their percentile interval
    # need not contain the point estimate; the other metrics' must.
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "brier", "nll"):
        low, high = ci[key]
        assert low <= point[key] <= high, key


def test_bootstrap_fast_path_equals_slow_path() -> None:
    p, y = _random_binary(n=160)
    fn = functools.partial(binary_metrics, threshold=0.3)
    fast = bootstrap_ci(fn, p, y, n_resamples=40, seed=5)
    slow = bootstrap_ci(fn, p, y, n_resamples=40, seed=5, fast=False)
    assert fast.keys() == slow.keys()
    for key in fast:
        assert fast[key] == pytest.approx(slow[key], abs=1e-6), key


def test_bootstrap_stratified_keeps_class_counts_and_ignores_nan() -> None:
    y = np.array([0] * 7 + [1] * 3)
    idx = resample_indices(y, 50, seed=0, stratified=True)
    assert np.all(y[idx].sum(axis=1) == 3)
    # Unstratified resamples of a tiny set are sometimes one-class: AUC is NaN there and must be skipped.
    p = np.linspace(0.05, 0.95, 10)
    ci = bootstrap_ci(binary_metrics, p, y, n_resamples=200, seed=0, stratified=False)
    assert all(math.isfinite(v) for v in ci["roc_auc"])
    # A custom metric (slow path) that is always NaN gives a NaN interval instead of an error.
    ci = bootstrap_ci(lambda pp, yy: {"m": math.nan, "label": "x"}, p, y, n_resamples=10)
    assert set(ci) == {"m"} and all(math.isnan(v) for v in ci["m"])


def test_bootstrap_is_fast() -> None:
    p, y = _random_binary(n=160)
    start = time.perf_counter()
    bootstrap_ci(functools.partial(binary_metrics, threshold=0.5), p, y, n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 3.0


# --- plots -----------------------------------------------------------------------------------------------

def test_plots_write_valid_png(tmp_path: Path) -> None:
    p, y = _random_binary(n=120)
    plot_roc(p, y, tmp_path / "roc.png", thresholds=[0.5, 0.3])
    plot_reliability(p, np.sqrt(p), y, tmp_path / "rel.png")
    plot_confusion([[50, 10], [5, 55]], ["benign", "malignant"], tmp_path / "cm.png")
    plot_histogram(p, y, tmp_path / "hist.png", ["benign", "malignant"])
    plot_roc(p[:5], np.ones(5, int), tmp_path / "roc_one_class.png")  # undefined ROC still draws
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == ["cm.png", "hist.png", "rel.png", "roc.png", "roc_one_class.png"]  # no temp files left
    for f in tmp_path.iterdir():
        assert f.read_bytes()[:8] == PNG_MAGIC


# --- report ----------------------------------------------------------------------------------------------

def _records(n: int = 160, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    logit = rng.normal(3.0 * (2 * y - 1), 2.0)
    prob = 1 / (1 + np.exp(-logit))
    return {
        "file": [f"img_{i:03d}.png" for i in range(n)],
        "label": y,
        "logit": logit,
        "prob": prob,
        "prob_cal": 1 / (1 + np.exp(-logit / 1.7)),
    }


def _strict_json(path: Path) -> object:
    def reject(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def test_build_report_writes_everything(tmp_path: Path) -> None:
    rec = _records()
    out = tmp_path / "report"
    report = build_report(rec, threshold_calibrated=0.2, temperature=1.7, method="temperature", out_dir=out,
                          title="Test report", data_note="synthetic demo data", seed=0, n_resamples=200)
    names = {f.name for f in out.iterdir()}
    assert names == {"report.json", "report.md", "roc.png", "reliability.png", "confusion.png", "histogram.png"}
    on_disk = _strict_json(out / "report.json")
    assert on_disk == report
    assert report["paper"] == PAPER and report["n"] == 160

    for kind, key in (("uncalibrated", "prob"), ("calibrated", "prob_cal")):
        for name, t in (("threshold_0.5", 0.5), ("threshold_calibrated", 0.2)):
            entry = report["results"][kind][name]
            expected = binary_metrics(rec[key], rec["label"], threshold=t)
            assert entry["threshold"] == t
            assert entry["metrics"]["confusion"] == expected["confusion"]
            for metric in METRIC_KEYS:
                got = entry["metrics"][metric]
                assert got == pytest.approx(expected[metric], abs=1e-12), (kind, name, metric)
                low, high = entry["ci95"][metric]
                assert low <= high
            for metric in ("sensitivity", "specificity"):  # exact binomial intervals bracket the estimate
                low, high = entry["exact_ci95"][metric]
                assert low <= entry["metrics"][metric] <= high

    md = (out / "report.md").read_text(encoding="utf-8")
    for needle in ("160 test images", "stratified bootstrap", "decision support, not a diagnosis",
                   "synthetic demo data", "| Metric |", "0.9938"):
        assert needle in md, needle
    for png in ("roc.png", "reliability.png", "confusion.png", "histogram.png"):
        assert f"]({png})" in md
        assert (out / png).read_bytes()[:8] == PNG_MAGIC


def test_build_report_nan_becomes_null(tmp_path: Path) -> None:
    rec = _records(n=20)
    rec["label"] = np.ones(20, int)  # one class: AUC and specificity undefined
    report = build_report(rec, threshold_calibrated=0.5, temperature=None, method="none", out_dir=tmp_path,
                          title="One class", data_note="synthetic demo data", n_resamples=20)
    assert report["results"]["calibrated"]["threshold_0.5"]["metrics"]["roc_auc"] is None
    assert _strict_json(tmp_path / "report.json") == report
    assert "n/a" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_build_report_rejects_incomplete_records(tmp_path: Path) -> None:
    rec = _records(n=10)
    del rec["prob_cal"]
    with pytest.raises(ValueError, match="prob_cal") as caught:  # evaluate builds the records: a bug, not bad input
        build_report(rec, threshold_calibrated=0.5, temperature=1.0, method="temperature", out_dir=tmp_path,
                     title="x", data_note="y", n_resamples=10)
    assert not isinstance(caught.value, LungCNNInputError)
