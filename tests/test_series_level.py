"""Series-level figures from a cross-validation (`python -m lungcnn.cv series`): each rule scores the same series."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lungcnn.cli import cv
from lungcnn.evaluation.series_level import compare_rules

from .test_cv import _write_predictions


def _fold(root, fold: int, rng) -> pd.DataFrame:
    """A fold whose 8 test series (4 slices each) are malignant when odd; one malignant slice per malignant series
    stands out, so `max` separates the series and `mean` does less well."""
    job = root / str(fold)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- data.fold={fold}\n")
    (job / "metrics.json").write_text(json.dumps({"test": {"accuracy": 1.0}}))
    rows = []
    for s in range(8):
        label = s % 2
        p = rng.uniform(0.05, 0.3, 4) if label else rng.uniform(0.3, 0.6, 4)
        if label:
            p[rng.integers(4)] = rng.uniform(0.7, 0.95)
        rows += [{"file": f"f{fold}/s{s}/{k}.png", "group": f"g{fold}{s}", "label": label, "p": p[k]} for k in range(4)]
    frame = pd.DataFrame(rows)
    frame.assign(split="test")[["file", "label", "group", "split"]].to_csv(job / "split.csv", index=False)
    probs = np.stack([1 - frame["p"], frame["p"]], axis=1)
    _write_predictions(job / "report" / "predictions.csv", ["benign", "malignant"], list(frame["file"]),
                       frame["label"].to_numpy(), probs, probs)
    return frame.assign(fold=fold)


def test_rules_are_scored_on_series_pooled_over_folds(tmp_path, capsys):
    rng = np.random.default_rng(0)
    multirun = tmp_path / "cv"
    truth = pd.concat([_fold(multirun, f, rng) for f in range(2)])
    result = compare_rules([str(multirun / "0"), str(multirun / "1")], n_resamples=200)
    assert result["series"] == {"n": 16, "positive": 8, "negative": 8, "mixed_labels": 0}
    series = truth.groupby(["fold", "group"]).agg(label=("label", "first"), top=("p", "max"), mean=("p", "mean"))
    assert result["rules"]["max"]["roc_auc"] == pytest.approx(roc_auc_score(series["label"], series["top"]))
    assert result["rules"]["mean"]["roc_auc"] == pytest.approx(roc_auc_score(series["label"], series["mean"]))
    assert result["rules"]["max"]["roc_auc"] == 1.0 > result["rules"]["mean"]["roc_auc"]
    low, high = result["rules"]["mean"]["roc_auc_ci"]
    assert low < result["rules"]["mean"]["roc_auc"] <= high
    assert result["slices"]["roc_auc"] == pytest.approx(roc_auc_score(truth["label"], truth["p"]))
    assert cv.main(["series", "--multirun", str(multirun), "--n-resamples", "50", "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "| topk_mean k=3 |" in printed and "Series: 16 (8 positive" in printed
    assert json.loads((tmp_path / "s.json").read_text())["rules"]["max"]["roc_auc"] == 1.0
