"""Percentile bootstrap confidence intervals.

With ~160 test images a point estimate alone overstates certainty; the interval says how much the number
would move on another test set of the same size. Resampling is stratified by class by default so every
resample keeps the test set's class balance (and sensitivity/specificity stay defined).

With `groups` (the series each image belongs to) whole series are resampled instead of images: slices of
one scan are not independent, so an image-level interval is too narrow when a series has many slices.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy.stats import beta

from lungcnn.errors import LungCNNInputError
from lungcnn.metrics.classification import binary_metrics, binary_metrics_batched

MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]


def bootstrap_ci(
    metric_fn: MetricFn,
    probs: Any,
    labels: Any,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
    fast: bool = True,
    groups: Any = None,
) -> dict[str, tuple[float, float]]:
    """(low, high) percentile interval for every real-valued top-level entry of `metric_fn(probs, labels)`.

    Resamples where a metric is NaN (e.g. AUC of a one-class resample) are ignored for that metric; an
    all-NaN metric gets (nan, nan). The same seed gives the same intervals. `binary_metrics` itself, or
    `functools.partial(binary_metrics, threshold=t)`, or any metric_fn with a `batched(P, Y)` attribute,
    takes a vectorised numpy path (set `fast=False` to force one call per resample). `groups` (N,):
    resample series (stratified by class) rather than images; always one call per resample.
    """
    p = np.asarray(probs)
    y = np.asarray(labels)
    if p.shape[:1] != y.shape or y.ndim != 1 or y.size == 0:
        raise LungCNNInputError(f"probs {p.shape} and labels {y.shape} must have the same, non-zero length")
    if int(n_resamples) < 1:
        raise LungCNNInputError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if groups is not None:  # resamples of varying length: no rectangular index array, so no batched path
        idx = group_resample_indices(y, groups, int(n_resamples), seed)
    else:
        idx = resample_indices(y, int(n_resamples), seed, stratified)

    batched = _batched_version(metric_fn) if fast and groups is None else None
    if batched is not None:
        samples = {k: np.asarray(v, dtype=np.float64) for k, v in batched(p[idx], y[idx]).items()}
    else:
        rows = [metric_fn(p[i], y[i]) for i in idx]
        keys = [k for k, v in rows[0].items() if _is_real(v)]
        samples = {k: np.array([float(r[k]) for r in rows]) for k in keys}
    return {k: _percentile_interval(v, alpha) for k, v in samples.items()}


def resample_indices(labels: np.ndarray, n_resamples: int, seed: int, stratified: bool = True) -> np.ndarray:
    """(n_resamples, N) indices drawn with replacement; stratified keeps each class's count fixed."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    n = y.shape[0]
    if not stratified:
        return rng.integers(0, n, size=(n_resamples, n))
    out = np.empty((n_resamples, n), dtype=np.int64)
    col = 0
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        draws = rng.integers(0, members.size, size=(n_resamples, members.size))
        out[:, col:col + members.size] = members[draws]
        col += members.size
    return out


def group_resample_indices(labels: Any, groups: Any, n_resamples: int, seed: int) -> list[np.ndarray]:
    """Cluster bootstrap: per class, draw as many series as it has, with replacement; take all their images.

    A "series" is the images sharing a group id and a label, so each class keeps its number of series
    (and stays present); the number of images varies from resample to resample.
    """
    y, g = np.asarray(labels), np.asarray(groups).astype(str)
    if g.shape != y.shape:
        raise ValueError(f"groups {g.shape} and labels {y.shape} must have the same length")
    rng = np.random.default_rng(seed)
    strata = []
    for cls in np.unique(y):
        in_class = np.flatnonzero(y == cls)
        _, series = np.unique(g[in_class], return_inverse=True)
        strata.append([in_class[series == s] for s in range(series.max() + 1)])
    out = []
    for _ in range(n_resamples):
        out.append(np.concatenate([members[j] for members in strata for j in rng.integers(0, len(members), len(members))]))
    return out


def _batched_version(metric_fn: MetricFn) -> Callable[[np.ndarray, np.ndarray], Mapping[str, Any]] | None:
    batched = getattr(metric_fn, "batched", None)
    if callable(batched):
        return batched
    if metric_fn is binary_metrics:
        return binary_metrics_batched
    if (
        isinstance(metric_fn, functools.partial)
        and metric_fn.func is binary_metrics
        and not metric_fn.args
        and set(metric_fn.keywords) <= {"threshold"}
    ):
        return functools.partial(binary_metrics_batched, **metric_fn.keywords)
    return None


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def _is_real(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and v.dtype.kind in "fiu"
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 1 - alpha interval of a share k / n; NaN for n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)
