"""Point metrics for the binary (benign/malignant) and K-class tasks.

The project's decision rule is `prob >= threshold` -> malignant, but torchmetrics thresholds with a strict
`>`; we therefore binarise ourselves and hand torchmetrics 0/1 decisions, so an image whose probability equals
the threshold is counted the same way here as in the app.

Values a predictions file can carry (probabilities outside [0, 1], labels out of range, an empty table)
raise `LungCNNInputError`; shapes that only a caller's bug can produce (arrays of different lengths,
class names that do not match the columns) raise ValueError, with a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_calibration_error,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity,
    multiclass_calibration_error,
)

from lungcnn.errors import LungCNNInputError

N_BINS = 15  # equal-width calibration bins, used for ECE/MCE everywhere (and the reliability plot)
METRIC_KEYS = (
    "accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "brier", "nll", "ece", "mce",
)
_EPS = float(np.finfo(np.float64).eps)  # the clip sklearn's log_loss uses for float64


def check_labels(labels: Any, n: int | None = None, num_classes: int = 2) -> np.ndarray:
    """Labels as int64 in 0..num_classes-1; a clear error beats a silent cast of 0.7 to 0."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries but the predictions have {n}")
    if y.size == 0:
        raise LungCNNInputError("labels is empty: need at least one example")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise LungCNNInputError(f"labels must be integers, got dtype {y.dtype}")
    yi = y.astype(np.int64)
    if not np.array_equal(yi, y) or yi.min() < 0 or yi.max() >= num_classes:
        raise LungCNNInputError(
            f"labels must be integers in 0..{num_classes - 1}, got values {np.unique(y)[:10]}"
        )
    return yi


def check_binary(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate binary probabilities (N,) in [0, 1] and labels (N,) in {0, 1}; return float64/int64 arrays."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(
            f"binary probabilities must be a 1-D array (probability of malignant), got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise LungCNNInputError("probabilities must be finite and in [0, 1] (did you pass logits?)")
    return p, check_labels(labels, n=p.shape[0])


def check_multiclass(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate K-class probabilities (N, K) whose rows sum to 1, and labels in 0..K-1."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise LungCNNInputError(f"multiclass probabilities must have shape (N, K) with K >= 2, got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise LungCNNInputError("probabilities must be finite and in [0, 1] (did you pass logits?)")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise LungCNNInputError("each row of multiclass probabilities must sum to 1 (apply softmax first)")
    return p, check_labels(labels, n=p.shape[0], num_classes=p.shape[1])


def binary_metrics(probs: Any, labels: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Classification, ranking and calibration metrics at decision `prob >= threshold`.

    Undefined metrics are NaN rather than a misleading 0: roc_auc needs both classes, sensitivity needs a
    positive, specificity a negative. Precision and F1 follow the usual zero-division convention (0).
    `confusion` holds the integer counts tp, fp, tn, fn.
    """
    p, y = check_binary(probs, labels)
    threshold = _check_threshold(threshold)
    pt = torch.tensor(p)  # a copy: the inputs may be read-only views (pandas, np.broadcast_to)
    yt = torch.tensor(y)
    dt = (pt >= threshold).long()
    has_pos, has_neg = bool(y.any()), bool((y == 0).any())

    f = _to_float
    out: dict[str, Any] = {
        "accuracy": f(binary_accuracy(dt, yt)),
        "precision": f(binary_precision(dt, yt)),
        "sensitivity": f(binary_recall(dt, yt)) if has_pos else math.nan,
        "specificity": f(binary_specificity(dt, yt)) if has_neg else math.nan,
        "f1": f(binary_f1_score(dt, yt)),
        "roc_auc": f(binary_auroc(pt, yt)) if has_pos and has_neg else math.nan,
        "brier": float(np.mean((p - y) ** 2)),
        "nll": float(_nll_rows(p, y)),
        "ece": f(binary_calibration_error(pt, yt, n_bins=N_BINS, norm="l1")),
        "mce": f(binary_calibration_error(pt, yt, n_bins=N_BINS, norm="max")),
    }
    d = dt.numpy().astype(bool)
    pos = y == 1
    out["confusion"] = {
        "tp": int(np.sum(d & pos)),
        "fp": int(np.sum(d & ~pos)),
        "tn": int(np.sum(~d & ~pos)),
        "fn": int(np.sum(~d & pos)),
    }
    return out


def binary_metrics_batched(
    probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """`binary_metrics` for R resamples at once: probs and labels are (R, N); every value is an (R,) array.

    The bootstrap calls this instead of R torchmetrics round-trips; it reproduces `binary_metrics`
    (same binning, same NaN rules, tie-aware AUC) and is tested equal to it.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"batched metrics need (R, N) probs and labels of equal shape, got {p.shape}")
    threshold = _check_threshold(threshold)
    n = p.shape[1]
    d = p >= threshold
    tp = np.sum(d & y, axis=1).astype(np.float64)
    fp = np.sum(d & ~y, axis=1).astype(np.float64)
    fn = np.sum(~d & y, axis=1).astype(np.float64)
    tn = n - tp - fp - fn
    n_pos, n_neg = tp + fn, tn + fp
    yf = y.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "accuracy": (tp + tn) / n,
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "sensitivity": np.where(n_pos > 0, tp / n_pos, np.nan),
            "specificity": np.where(n_neg > 0, tn / n_neg, np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            "roc_auc": _auroc_batched(p, y, n_pos, n_neg),
            "brier": np.mean((p - yf) ** 2, axis=1),
            "nll": _nll_rows(p, y),
        }
    out["ece"], out["mce"] = _calibration_errors_batched(p, yf)
    return out


def multiclass_metrics(probs: Any, labels: Any, class_names: Sequence[str],
                       decisions: Any = None) -> dict[str, Any]:
    """K-class metrics of `decisions` (N class indices from the checkpoint's decision rule; default: argmax P):
    balanced accuracy and macro F1 (robust to class imbalance), per-class sensitivity/specificity and
    one-vs-rest AUC, top-label ECE and the confusion matrix (rows = true class, columns = predicted)."""
    p, y = check_multiclass(probs, labels)
    k = p.shape[1]
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"got {len(names)} class names for {k} probability columns")
    pred = p.argmax(axis=1) if decisions is None else np.asarray(decisions, dtype=np.int64)
    if pred.shape != y.shape or (pred.size and (pred.min() < 0 or pred.max() >= k)):
        raise ValueError(f"decisions must be {y.size} class indices in [0, {k}), got shape {pred.shape}")
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    fn, fp = support - tp, predicted - tp
    tn = len(y) - tp - fn - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(support > 0, tp / support, np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        one = (y == i).astype(np.int64)
        auc = math.nan
        if 0 < one.sum() < len(one):
            auc = _to_float(binary_auroc(pt[:, i], torch.from_numpy(one)))
        per_class[name] = {
            "sensitivity": float(sens[i]),
            "specificity": float(spec[i]),
            "f1": float(f1[i]),
            "roc_auc": auc,
            "support": int(support[i]),
        }
    ece = multiclass_calibration_error(pt, yt, num_classes=k, n_bins=N_BINS, norm="l1")
    return {
        "accuracy": float(tp.sum() / len(y)),
        "balanced_accuracy": _nanmean(sens),
        "macro_f1": _nanmean(f1),
        "ece": _to_float(ece),
        "per_class": per_class,
        "class_names": names,
        "confusion_matrix": cm.tolist(),
    }


def bin_indices(probs: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Calibration bin of each probability, exactly as torchmetrics bins it.

    Bins are [b_i, b_{i+1}) on torch.linspace(0, 1, n_bins + 1); a probability of exactly 1.0 gets its own
    slot `n_bins`, as in torchmetrics, hence n_bins + 1 slots in total.
    """
    pt = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return (torch.bucketize(pt, edges, right=True) - 1).numpy()


def _calibration_errors_batched(
    p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray]:
    r, n = p.shape
    slots = n_bins + 1
    idx = bin_indices(p.ravel(), n_bins).reshape(r, n) + np.arange(r)[:, None] * slots
    count = np.bincount(idx.ravel(), minlength=r * slots).reshape(r, slots)
    conf = np.bincount(idx.ravel(), weights=p.ravel(), minlength=r * slots).reshape(r, slots)
    acc = np.bincount(idx.ravel(), weights=y.ravel(), minlength=r * slots).reshape(r, slots)
    gap = np.abs(acc - conf)  # = count * |mean accuracy - mean confidence| per bin
    ece = gap.sum(axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        mce = np.where(count > 0, gap / count, 0.0).max(axis=1)
    return ece, mce


def _auroc_batched(p: np.ndarray, y: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    # Mann-Whitney U with average ranks for ties == the area under the exact (tie-aware) ROC curve.
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1, method="average")
    u = np.sum(np.where(y, ranks, 0.0), axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _to_float(x: torch.Tensor) -> float:
    # torchmetrics returns float32 for count-based metrics; report their shortest decimal form
    # (0.6375, not 0.637499988079071) so JSON and tables stay readable. Precision is float32's either way.
    if x.dtype == torch.float32:
        return float(str(np.float32(x.item())))
    return float(x.item())


def _nll_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Clip as sklearn's log_loss does, so a confident mistake costs ~36 nats instead of infinity.
    pc = np.clip(p, _EPS, 1 - _EPS)
    return -np.mean(np.where(y.astype(bool), np.log(pc), np.log(1 - pc)), axis=-1)


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise LungCNNInputError(f"threshold must be in [0, 1], got {threshold}")
    return t


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan
