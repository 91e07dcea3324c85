"""Train / val / test splits: stratified by label, grouped by series, seeded, saved to `split.csv`.

Adjacent slices of one scan are near-copies, so a random image-level split puts the same patient on
both sides and inflates every metric. With `grouped=True` (the default) no group crosses two splits;
`grouped=False` reproduces the image-level split that published results on IQ-OTH/NCCD used.
`n_folds`/`fold` select one fold of a grouped k-fold cross-validation as the test split.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lungcnn.errors import LungCNNInputError, fail, require_bool, require_int, require_number
from lungcnn.fileio import atomic_open

SPLITS = ("train", "val", "test")


def assign_splits(
    frame: pd.DataFrame,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    grouped: bool = True,
    n_folds: int | None = None,
    fold: int | None = None,
) -> pd.Series:
    """A 'train' / 'val' / 'test' label per row of `frame` (columns label, group; with `source`, several sources:
    stratified by source and label together, so every split holds each source's classes in their proportions,
    not whichever mix the groups of the largest source happen to give)."""
    check_split_args(val_fraction, test_fraction, n_folds, fold, grouped)
    labels = frame["label"].to_numpy()
    if "source" in frame:
        labels = pd.factorize(frame["source"].astype(str) + ":" + frame["label"].astype(str), sort=True)[0]
    groups = frame["group"].to_numpy() if grouped else np.arange(len(frame)).astype(str)
    split = np.full(len(frame), "train", dtype=object)
    if n_folds:
        test = _one_fold(labels, groups, n_folds, seed, fold)
        val_share = val_fraction / (1 - 1 / n_folds)
    else:
        test = _one_fold(labels, groups, round(1 / test_fraction), seed, 0)
        val_share = val_fraction / (1 - test_fraction)
    split[test] = "test"
    rest = np.setdiff1d(np.arange(len(frame)), test)
    val = _one_fold(labels[rest], groups[rest], round(1 / val_share), seed + 1, 0)
    split[rest[val]] = "val"
    result = pd.Series(split, index=frame.index, name="split")
    for name in SPLITS:
        if not (result == name).any():
            raise LungCNNInputError(
                f"the {name} split is empty: too few images or groups ({len(set(groups))}) for these fractions"
            )
    return result


def _one_fold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int, fold: int) -> np.ndarray:
    """Positions (into `labels`) of fold `fold` of a seeded stratified group k-fold."""
    n_splits = max(2, min(n_splits, len(set(groups))))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, chosen = list(folds.split(labels, labels, groups))[fold % n_splits]
    return chosen


def check_split_args(val_fraction: float, test_fraction: float, n_folds: int | None, fold: int | None,
                     grouped: bool = True) -> None:
    """The arguments of `assign_splits` (data.val_fraction, data.test_fraction, data.n_folds, data.fold,
    data.grouped); the data module calls this on construction, before any image is read."""
    n_folds = require_int("data.n_folds", n_folds, 2, optional=True)
    if n_folds is None and fold is not None:
        raise LungCNNInputError(f"data.fold={fold!r} needs data.n_folds (cross-validation); set both or neither")
    if n_folds is not None and (isinstance(fold, bool) or not isinstance(fold, numbers.Integral)
                                or not 0 <= fold < n_folds):
        fail("data.fold", f"an integer in 0..{n_folds - 1} when data.n_folds={n_folds}", fold)
    val = require_number("data.val_fraction", val_fraction, 0, 1, low_open=True)
    test = require_number("data.test_fraction", test_fraction, 0, 1, low_open=True)
    held_out = 1 / n_folds if n_folds else test
    if val + held_out >= 1:
        raise LungCNNInputError(f"data.val_fraction + data.test_fraction must be < 1 to leave training images, got "
                                f"{val} + {held_out:g}" + (f" (1/data.n_folds={n_folds})" if n_folds else ""))
    require_bool("data.grouped", grouped)


def save_split(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        # `source` only where the data has several sources: a single folder's split.csv stays as it was.
        frame[["file", "label", "group", "split", *(["source"] if "source" in frame.columns else [])]].to_csv(f, index=False)


def load_split(path: str | Path, frame: pd.DataFrame) -> pd.Series:
    """The split column for `frame` from a saved `split.csv`; every image must be listed there."""
    path = Path(path)
    if not path.is_file():
        raise LungCNNInputError(f"data.split_file: split file not found: {path}")
    saved = pd.read_csv(path, dtype={"file": str, "split": str})
    if not {"file", "split"} <= set(saved.columns) or not saved["split"].isin(SPLITS).all():
        raise LungCNNInputError(f"{path}: not a lungcnn split file (columns file,label,group,split; split in {SPLITS})")
    by_file = dict(zip(saved["file"], saved["split"], strict=False))
    missing = [f for f in frame["file"] if f not in by_file]
    if missing:
        raise LungCNNInputError(f"{path}: {len(missing)} image(s) of the data are not in the split file, e.g. {missing[0]}")
    return frame["file"].map(by_file).rename("split")
