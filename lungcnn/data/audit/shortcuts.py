"""Shortcut check: how well features with no anatomy (intensity histogram, image size) separate classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

CV_FOLDS = 5
# (task, classes): binary tasks give the ROC-AUC of the last class against the first.
SHORTCUT_TASKS = (
    ("malignant_vs_benign", ("benign", "malignant")),
    ("benign_vs_normal", ("normal", "benign")),
    ("three_class", ("benign", "malignant", "normal")),
)


def shortcut_check(frame: pd.DataFrame, hists: np.ndarray, groups: Sequence[str], *, seed: int = 0,
                   folds: int = CV_FOLDS) -> dict[str, dict[str, Any]]:
    """Grouped-CV scores of classifiers that see no anatomy: the intensity histogram, the image size.

    A high score means the classes differ in acquisition (scanner, window, crop, export size), and a CNN
    can score well by learning that instead of the lesion.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    # A tree for size: a shortcut there is "this odd size -> malignant", which is not monotone in pixels.
    features = {
        "intensity_histogram": (hists, lambda: make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))),
        "image_size": (frame[["width", "height"]].to_numpy(dtype=np.float64),
                       lambda: DecisionTreeClassifier(max_depth=4, min_samples_leaf=3, class_weight="balanced", random_state=0)),
    }
    classes = frame["class_name"].to_numpy()
    groups = np.asarray(groups)
    out: dict[str, dict[str, Any]] = {}
    for feature, (x, model) in features.items():
        out[feature] = {}
        for task, names in SHORTCUT_TASKS:
            rows = np.isin(classes, names)
            y = np.array([names.index(c) for c in classes[rows]])
            out[feature][task] = _grouped_cv_score(model, x[rows], y, groups[rows], len(names), seed, folds)
    return out


def _grouped_cv_score(model: Any, x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, seed: int,
                      folds: int) -> dict[str, Any]:
    """Mean over grouped folds of the ROC-AUC (k = 2) or balanced accuracy (k > 2) of `model()`.

    Per fold, not pooled: each fold's model has its own intercept, and pooling such scores can push a
    useless feature's AUC well below 0.5.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    if len(np.unique(y)) < k:
        return {"skipped": "a class of this task has no images"}
    n_splits = min(folds, min(len(np.unique(groups[y == c])) for c in range(k)))
    if n_splits < 2:
        return {"skipped": "a class of this task has fewer than 2 groups"}
    scores = []
    for train, test in StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x, y, groups):
        if len(np.unique(y[train])) < k or len(np.unique(y[test])) < k:
            return {"skipped": "a cross-validation fold lacks a class"}
        prob = model().fit(x[train], y[train]).predict_proba(x[test])
        scores.append(roc_auc_score(y[test], prob[:, 1]) if k == 2 else balanced_accuracy_score(y[test], prob.argmax(1)))
    return {"metric": "roc_auc" if k == 2 else "balanced_accuracy", "value": float(np.mean(scores)),
            "per_fold": [round(float(s), 4) for s in scores], "n": len(y)}
