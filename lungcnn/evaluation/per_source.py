"""Figures per source: how a model does on each CT source of an evaluation, with series-bootstrap intervals.

A pooled figure over several sources hides the one a model fails on: a source of normal scans has no ROC-AUC,
only the share of its slices called malignant, and a source can be answered rarely (out of domain, no lungs in
view). Used by `lungcnn evaluate` (a multi-source checkpoint's test split) and the leave-one-source-out
evaluation (`lungcnn.evaluation.by_source`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def scored_frame(predictions: str | Path, groups: Mapping[str, str]) -> pd.DataFrame:
    """A labelled prediction table (with `source`) as the columns `per_source_table` needs; `groups`: file -> series
    group (the split file's), each image its own group where missing; the positive class is the table's last."""
    from lungcnn.inference.schema import DECISION, FILE, LABEL, SOURCE, Table, probability_column

    table = Table.read(predictions)
    positive = table.class_names[-1]
    frame = table.frame[table.readable]
    return pd.DataFrame({
        "source": frame[SOURCE].to_numpy(),
        "group": [groups.get(f, f"file:{f}") for f in frame[FILE]],
        "label": (frame[LABEL] == positive).astype(int).to_numpy(),
        "probability": frame[probability_column(positive)].to_numpy(float),
        "called": (frame[DECISION] == positive).astype(int).to_numpy(),
        "judged": table.in_domain[table.readable].astype(int).to_numpy()})


FIGURES = ("roc_auc", "sensitivity", "specificity", "called_positive", "not_judged", "wrong_of_judged")


def _figures(pcj: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """From columns (probability, called, judged): ROC-AUC of the probability over every slice; sensitivity and
    specificity of the call over the slices judged (a slice out of domain or without lungs in view gets no
    answer); the share of all slices called positive; the share not judged; the share of judged slices answered
    wrongly."""
    from sklearn.metrics import roc_auc_score

    p, called, judged = pcj[:, 0], pcj[:, 1].astype(bool), pcj[:, 2].astype(bool)
    pos, neg = (y == 1) & judged, (y == 0) & judged
    wrong = called != (y == 1)
    return {"roc_auc": float(roc_auc_score(y, p)) if (y == 1).any() and (y == 0).any() else math.nan,
            "sensitivity": float(called[pos].mean()) if pos.any() else math.nan,
            "specificity": float((~called[neg]).mean()) if neg.any() else math.nan,
            "called_positive": float(called.mean()),
            "not_judged": float((~judged).mean()),
            "wrong_of_judged": float(wrong[judged].mean()) if judged.any() else math.nan}


def per_source_table(frame: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per source: counts, and each figure of `_figures` with a 95% series-bootstrap interval (whole groups
    resampled within each class, since slices of one scan are not independent).

    `frame`: columns source, group, label (1 = positive), probability (of the positive class), called (0/1),
    judged (0/1: the domain guard and the lung check let the slice be answered)."""
    from lungcnn.evaluation import bootstrap_ci

    out = {}
    for name, part in frame.groupby("source", sort=True):
        pcj = part[["probability", "called", "judged"]].to_numpy(float)
        y = part["label"].to_numpy(int)
        figures = _figures(pcj, y)
        ci = bootstrap_ci(_figures, pcj, y, n_resamples=n_resamples, seed=seed, groups=part["group"].to_numpy())
        out[str(name)] = {"n": len(part), "n_positive": int(y.sum()), "n_negative": int((y == 0).sum()),
                          "n_groups": int(part["group"].nunique()),
                          **{k: {"value": v, "ci95": list(ci[k])} for k, v in figures.items()}}
    return out


def markdown(table: dict[str, dict[str, Any]], title: str = "held-out source") -> str:
    """The per-source table as markdown: value (95% CI) per figure."""
    keys = FIGURES
    lines = [f"| {title} | images (pos/neg) | groups | " + " | ".join(keys) + " |", "|---" * (len(keys) + 3) + "|"]
    for name, row in table.items():
        cells = []
        for k in keys:
            v, (lo, hi) = row[k]["value"], row[k]["ci95"]
            cells.append("-" if math.isnan(v) else f"{v:.3f} ({lo:.3f}-{hi:.3f})")
        lines.append(f"| {name} | {row['n']} ({row['n_positive']}/{row['n_negative']}) | {row['n_groups']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
