"""Isotonic calibration: a monotone step map from uncalibrated to calibrated probability.

More flexible than temperature scaling (it can fix any monotone distortion) but needs more validation data
and can create ties. The fitted map is stored as two plain lists of floats so it fits in a checkpoint and in
JSON without pickling a scikit-learn object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from lungcnn.metrics.classification import check_binary
from lungcnn.spec import reject_multiclass


def fit_isotonic(probs: Any, labels: Any) -> dict[str, Any]:
    """Fit on binary validation probabilities (N,) and labels; return {"x": [...], "y": [...]} breakpoints.

    With only one class present there is nothing to fit, so the identity map is returned together with a
    "message" key (the temperature fitter behaves the same way).
    """
    reject_multiclass(probs)
    p, y = check_binary(probs, labels)
    if np.unique(y).size < 2:
        return {"x": [0.0, 1.0], "y": [0.0, 1.0],
                "message": "only one class in the labels: no isotonic map can be learned, using the identity"}
    ir = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True).fit(p, y)
    return {"x": [float(v) for v in ir.X_thresholds_], "y": [float(v) for v in ir.y_thresholds_]}
