"""Isotonic calibration: a monotone step map from uncalibrated to calibrated probability.

More flexible than temperature scaling (it can fix any monotone distortion) but needs more validation data
and can create ties. The fitted map is stored as two plain lists of floats so it fits in a checkpoint and in
JSON without pickling a scikit-learn object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.metrics import check_binary


def fit_isotonic(probs: Any, labels: Any) -> dict[str, Any]:
    """Fit on binary validation probabilities (N,) and labels; return {"x": [...], "y": [...]} breakpoints.

    With only one class present there is nothing to fit, so the identity map is returned together with a
    "message" key (the temperature fitter behaves the same way).
    """
    _reject_multiclass(probs)
    p, y = check_binary(probs, labels)
    if np.unique(y).size < 2:
        return {"x": [0.0, 1.0], "y": [0.0, 1.0],
                "message": "only one class in the labels: no isotonic map can be learned, using the identity"}
    ir = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True).fit(p, y)
    return {"x": [float(v) for v in ir.X_thresholds_], "y": [float(v) for v in ir.y_thresholds_]}


def apply_isotonic(params: Mapping[str, Any], probs: Any) -> np.ndarray:
    """Map probabilities through the stored breakpoints (linear between them, clipped outside), which is
    what IsotonicRegression.predict does; the output is non-decreasing in the input."""
    _reject_multiclass(probs)
    try:
        x = np.asarray(params["x"], dtype=np.float64)
        y = np.asarray(params["y"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise LungCNNInputError(f"isotonic params must be a dict with float lists 'x' and 'y': {e}") from e
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise LungCNNInputError(f"isotonic params 'x' and 'y' must be non-empty lists of equal length, "
                                f"got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or not np.all(np.isfinite(np.r_[x, y])):
        raise LungCNNInputError(
            "isotonic params are not a monotone map (x must increase, y must not decrease)"
        )
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)) or (p.size and (p.min() < 0.0 or p.max() > 1.0)):
        raise LungCNNInputError("probabilities must be finite and in [0, 1] (did you pass logits?)")
    return np.clip(np.interp(p, x, y), 0.0, 1.0)


def _reject_multiclass(probs: Any) -> None:
    shape = np.shape(probs)
    if len(shape) == 2:
        raise LungCNNInputError(
            f"isotonic calibration is binary only: got K-class probabilities of shape {shape}; "
            "use temperature scaling for K classes, or pass the (N,) probability of the positive class"
        )
