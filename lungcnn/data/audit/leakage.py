"""How many test images would see a near-duplicate or a same-group image in training, per split kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lungcnn.data.splits import assign_splits
from lungcnn.errors import LungCNNInputError


def leakage(frame: pd.DataFrame, pairs: np.ndarray, *, existing: bool = False, seed: int = 0,
            val_fraction: float = 0.15, test_fraction: float = 0.2) -> dict[str, Any]:
    """Test images with a near-duplicate, or an image of their (audit / existing) group, in training:
    under a random image-level split, a split grouped by the audit's groups, and by the existing ones."""
    scenarios = {"random": ("audit_group", False), "grouped_audit": ("audit_group", True)}
    if existing:
        scenarios["grouped_existing"] = ("existing_group", True)
    out: dict[str, Any] = {}
    for name, (column, grouped) in scenarios.items():
        try:
            split = assign_splits(frame.assign(group=frame[column]), val_fraction=val_fraction,
                                  test_fraction=test_fraction, seed=seed, grouped=grouped).to_numpy()
        except LungCNNInputError as e:
            out[name] = {"skipped": str(e)}
            continue
        out[name] = _leaks(frame, pairs, split, existing)
    return out


def _leaks(frame: pd.DataFrame, pairs: np.ndarray, split: np.ndarray, existing: bool) -> dict[str, int]:
    test, train = split == "test", split == "train"
    near = np.zeros(len(frame), bool)
    i, j = pairs[:, 0], pairs[:, 1]
    near[i[test[i] & train[j]]] = True
    near[j[test[j] & train[i]]] = True
    result = {"test_images": int(test.sum()), "near_duplicate_in_train": int(near.sum())}
    any_leak = near.copy()
    columns = ["audit_group"] + (["existing_group"] if existing else [])
    for column in columns:
        in_train = set(frame.loc[train, column])
        same = test & frame[column].isin(in_train).to_numpy()
        result[f"same_{column}_in_train"] = int(same.sum())
        any_leak |= same
    result["any_leak"] = int(any_leak.sum())
    return result
