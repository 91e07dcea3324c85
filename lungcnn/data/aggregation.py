"""Slice probabilities -> one series probability: the aggregations a `SeriesRule` names (a registry).

Each takes the calibrated P(target) of a series' readable slices (1-D, values in [0, 1], at least one) and
the rule's `k`, and returns one number in [0, 1].

- `max`: the most suspicious slice decides (one lesion on one slice is enough; every false alarm counts).
- `topk_mean`: the mean of the k most suspicious slices (a lesion spans several slices; one odd slice less so).
- `noisy_or`: 1 - prod(1 - p): slices as independent detectors; grows with the number of slices.
- `mean`: all slices alike (a diffuse finding; dilutes a small lesion).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _max(p: np.ndarray, k: int) -> float:
    return float(p.max())


def _topk_mean(p: np.ndarray, k: int) -> float:
    return float(np.sort(p)[-min(k, p.size):].mean())


def _noisy_or(p: np.ndarray, k: int) -> float:
    return float(-np.expm1(np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12)).sum()))


def _mean(p: np.ndarray, k: int) -> float:
    return float(p.mean())


AGGREGATIONS: dict[str, Callable[[np.ndarray, int], float]] = {
    "max": _max, "topk_mean": _topk_mean, "noisy_or": _noisy_or, "mean": _mean,
}


def aggregate(method: str, probabilities: np.ndarray, k: int = 1) -> float:
    """The series probability under `method`; NaN when no slice could be read."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    p = p[np.isfinite(p)]
    if p.size == 0:
        return float("nan")
    return AGGREGATIONS[method](p, k)
