"""Cross-fitted calibration: calibration and operating threshold fitted on many folds' out-of-fold outputs.

A fold's validation split holds about 14 benign slices of 3-4 patients: a calibration map or a sensitivity
threshold fitted there moves from seed to seed. Cross-fitting fits them instead on the pooled out-of-fold
(test) predictions of the OTHER folds of the same repeat (hundreds of slices of dozens of patients, from other
models) and applies them to this fold's network outputs; pooling the folds then measures, on patients no part
of the fit has seen, what a calibration fitted on other models' outputs does for a new model. `fit_pooled`
fits the same on every fold of every repeat, for a model trained by the same recipe (`python -m lungcnn.cv
crossfit OUT --apply CKPT`).

`ensemble_folds` gives the same treatment to the cross-repeat ensemble: every image's mean logit over the R
models (one per repeat) that never saw its series, an honest estimate of an R-model ensemble from the fits a
repeated CV already made.

Methods (binary): `platt` (logistic regression on the logit: P = sigmoid(a z + b), stored as the spec's
temperature T = 1/a and logit shift b/a, so ONNX and every consumer serve it unchanged) and `isotonic`
(a monotone step map of the uncalibrated probability, stored as breakpoints).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from lungcnn.calibration import apply_isotonic, fit_isotonic, threshold_for_sensitivity
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import binary_metrics, crossval
from lungcnn.evaluation.results import Scored, TargetPredictions
from lungcnn.spec import Calibration, DecisionRule, ModelSpec
from lungcnn.task import make_task

METHODS = ("platt", "isotonic")
EPS = 1e-7
BINARY = make_task("binary", ["benign", "malignant"])  # its `probabilities` is the project's one logits -> P


def fit(method: str, p_uncalibrated: np.ndarray, labels: np.ndarray, target_sensitivity: float, note: str,
        tta: str = "none") -> tuple[Calibration, DecisionRule]:
    """A binary calibration of `method` and the operating threshold for `target_sensitivity`, fitted on
    uncalibrated P(malignant) (N,) and labels (N,) (1 = malignant)."""
    if method not in METHODS:
        raise LungCNNInputError(f"cross-fitted calibration method must be one of {METHODS}, got {method!r}")
    p, y = np.asarray(p_uncalibrated, np.float64), np.asarray(labels, np.int64)
    if np.unique(y).size < 2:
        raise LungCNNInputError("cross-fitting needs both benign and malignant out-of-fold predictions")
    details: dict[str, Any] = {"fitted_on": note, "cross_fitted": True}
    if method == "platt":
        z = _logit(p)[:, None]
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z, y)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if a <= 0:
            raise LungCNNInputError(f"the out-of-fold outputs rank malignant below benign (slope {a:.3f}): nothing to calibrate")
        calibration = Calibration("temperature", temperature=1.0 / a, logit_shift=b / a, tta=tta,
                                  details={**details, "platt": {"slope": a, "intercept": b}})
    else:
        params = fit_isotonic(p, y)
        calibration = Calibration("isotonic", isotonic_x=params["x"], isotonic_y=params["y"], tta=tta, details=details)
    q = _apply(calibration, p)
    threshold = threshold_for_sensitivity(q, y, target_sensitivity)
    details = {**calibration.details, "target_sensitivity": target_sensitivity,
               "fit_at_threshold": {k: v for k, v in binary_metrics(q, y, threshold).items() if k != "confusion"}}
    return dataclasses.replace(calibration, details=details), DecisionRule(threshold=float(threshold))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _apply(calibration: Calibration, p_uncalibrated: np.ndarray) -> np.ndarray:
    """Calibrated P(malignant) from uncalibrated P(malignant) under a binary calibration."""
    if calibration.method == "isotonic":
        return apply_isotonic({"x": calibration.isotonic_x, "y": calibration.isotonic_y}, p_uncalibrated)
    return BINARY.probabilities(_logit(p_uncalibrated), calibration.logit_shift, calibration.temperature)


def read_folds(job_dirs: Sequence[Path], report: str) -> list[TargetPredictions]:
    """Each fold's readable, in-domain test rows: P(malignant) uncalibrated and under the fold's own calibration."""
    out = []
    for job in job_dirs:
        run = crossval.load_run(job, report)
        if run["predictions"] is None:
            raise LungCNNInputError(f"{job}: no {report}/predictions.csv (run `python -m lungcnn.cv run` first)")
        fold = crossval.fold_predictions(run)
        if len(fold.names) != 2:
            raise LungCNNInputError(f"cross-fitted calibration is for the binary task; {job} predicts {list(fold.names)}")
        out.append(fold.target())
    return out


def ensemble_folds(repeats: Sequence[Sequence[TargetPredictions]]) -> list[TargetPredictions]:
    """The cross-repeat ensemble's out-of-fold outputs, partitioned as the first repeat's folds.

    Each repeat's test folds hold every image once, so an image has one out-of-fold output per repeat, each from
    the one model of that repeat that never saw its series. The mean of those R logits is what an ensemble of R
    models of the recipe (each trained on (K-1)/K of the data) outputs for a patient none of them has seen.
    Images some repeat did not score (unreadable, flagged by that fold's domain guard) are left out. The last
    element is the mean of the members' probabilities under their own folds' calibrations (for comparison: no
    single calibration or threshold serves it).

    Args:
        repeats: per repeat, its folds as `read_folds` returns them (R >= 2).
    """
    if len(repeats) < 2:
        raise LungCNNInputError(f"an ensemble over repeats needs at least 2 repeats, got {len(repeats)}")
    logits: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    for folds in repeats:
        for fold in folds:
            for f, z, c in zip(fold.files, _logit(fold.uncalibrated), fold.calibrated):
                logits.setdefault(str(f), []).append(float(z))
                own.setdefault(str(f), []).append(float(c))
    out = []
    for fold in repeats[0]:
        keep = np.array([len(logits[str(f)]) == len(repeats) for f in fold.files], dtype=bool)
        z = np.array([np.mean(logits[str(f)]) for f in fold.files[keep]], dtype=np.float64)
        q = np.array([np.mean(own[str(f)]) for f in fold.files[keep]], dtype=np.float64)
        out.append(TargetPredictions(fold.target, fold.files[keep], fold.groups[keep], fold.labels[keep],
                                     1.0 / (1.0 + np.exp(-z)), q))
    return out


def crossfit_folds(folds: Sequence[TargetPredictions], method: str, target_sensitivity: float = 0.98, n_resamples: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Each fold calibrated on the others' out-of-fold outputs, pooled as `crossval` pools them:
    calibrated figures at 0.5 and at each fold's cross-fitted operating threshold, series-bootstrap 95% CIs."""
    groups, labels, calibrated, decided, thresholds = [], [], [], [], []
    for k, fold in enumerate(folds):
        others = [f for j, f in enumerate(folds) if j != k]
        p_fit, y_fit = (np.concatenate([f.uncalibrated for f in others]), np.concatenate([f.labels for f in others]))
        calibration, rule = fit(method, p_fit, y_fit, target_sensitivity, f"{len(y_fit)} out-of-fold images")
        q = _apply(calibration, fold.uncalibrated)
        for bucket, value in zip((groups, labels, calibrated, decided, thresholds),
                                 (fold.groups, fold.labels, q, (q >= rule.threshold).astype(float), rule.threshold)):
            bucket.append(value)
    g, y, q, d = (np.concatenate(a) for a in (groups, labels, calibrated, decided))
    return {"n": int(y.size), "n_series": int(np.unique(g).size), "n_malignant": int(y.sum()), "method": method,
            "target_sensitivity": target_sensitivity, "thresholds": thresholds,
            "calibrated": scored(q, y, g, n_resamples, seed),
            "operating_point": scored(d, y, g, n_resamples, seed, keep=crossval.DECISION_METRICS)}


def scored(p: np.ndarray, y: np.ndarray, groups: np.ndarray, n_resamples: int = 1000, seed: int = 0,
           keep: Sequence[str] | None = None) -> dict[str, Any]:
    """binary_metrics of P(malignant) `p` (or 0/1 decisions) with series-bootstrap 95% CIs; only `keep` if given."""
    return Scored.of(binary_metrics, p, y, groups=groups, n_resamples=n_resamples, seed=seed, keep=keep).as_json()


def fit_pooled(job_dirs: Sequence[Path], method: str, target_sensitivity: float = 0.98,
               report: str = "report") -> tuple[Calibration, DecisionRule]:
    """Calibration and threshold fitted on every given fold's out-of-fold outputs (for a new model of the recipe)."""
    folds = read_folds(job_dirs, report)
    p, y = np.concatenate([f.uncalibrated for f in folds]), np.concatenate([f.labels for f in folds])
    series = np.unique(np.concatenate([f.groups for f in folds])).size
    return fit(method, p, y, target_sensitivity,
               f"{len(y)} out-of-fold test outputs of {len(folds)} cross-validation folds ({series} series)")


def apply_to_checkpoint(spec: ModelSpec, calibration: Calibration, rule: DecisionRule) -> ModelSpec:
    """The spec with a cross-fitted calibration and threshold (its guard, data and network unchanged)."""
    if spec.task.outputs != 1:
        raise LungCNNInputError("cross-fitted calibration is for the binary task")
    if spec.calibration.tta != "none":
        raise LungCNNInputError(f"the checkpoint serves test-time augmentation {spec.calibration.tta!r}; the "
                                "cross-fitted map was fitted without it")
    return spec.replace(calibration=calibration, decision=rule, metrics={}, metric_values={})
