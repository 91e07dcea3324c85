"""What a looser domain guard would do to a leave-one-source-out run: each held-out source's shares at guard margins.

`calibration.guard.margin` multiplies the guard's fitted threshold; since nothing else depends on it, each held-out
source's figures at margin m follow from its holdout/predictions.csv (every slice's domain score, lung-check verdict
and calibrated probability), report.json (the decision threshold) and the calibrated checkpoint's guard (its
threshold and the margin m0 it was fitted with): a slice is judged when its lungs are in view and its score is at
most m / m0 times that threshold. Prints, per source
and margin: share not judged, share called positive, wrong among the judged, and ROC-AUC among the judged.

    python scripts/guard_margin.py OUT [--margins 1 1.1 1.2] [--positive malignant]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from lungcnn.models.checkpoint import load_checkpoint


def shares(table: pd.DataFrame, guard_threshold: float, decision_threshold: float, positive: str) -> dict[str, float]:
    judged = table["lungs_in_view"].astype(bool) & (table["domain_score"] <= guard_threshold)
    truth = table["label"] == positive
    called = judged & (table[f"probability_{positive}"] >= decision_threshold)
    p = table.loc[judged, f"probability_{positive}"]
    return {"not_judged": 1 - judged.mean(), "called_positive": called.mean(),
            "wrong_of_judged": (called != truth)[judged].mean() if judged.any() else float("nan"),
            "roc_auc_judged": roc_auc_score(truth[judged], p) if truth[judged].nunique() == 2 else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a finished `lungcnn cv run OUT --by-source` folder")
    parser.add_argument("--margins", type=float, nargs="+", default=[1.0, 1.1, 1.2])
    parser.add_argument("--positive", default="malignant")
    args = parser.parse_args(argv)
    folds = sorted(p.parents[1] for p in args.out.glob("**/holdout/predictions.csv"))  # OUT/seed<s>/<source>/holdout
    if not folds:
        sys.exit(f"{args.out}: no holdout/predictions.csv of a finished by-source run below it")
    print("| held-out source | margin | not judged | called positive | wrong of judged | ROC-AUC of judged |")
    print("|---|---|---|---|---|---|")
    for fold in folds:
        table = pd.read_csv(fold / "holdout" / "predictions.csv", dtype={"label": str})
        report = json.loads((fold / "holdout" / "report.json").read_text())
        guard = load_checkpoint(fold / "checkpoints" / "best.calibrated.ckpt")[0].guard
        fitted = guard.threshold / guard.details["margin"]
        for m in args.margins:
            s = shares(table, fitted * m, report["threshold_calibrated"], args.positive)
            print(f"| {fold.relative_to(args.out)} | {m:g} | {s['not_judged']:.3f} | {s['called_positive']:.3f} "
                  f"| {s['wrong_of_judged']:.3f} | {s['roc_auc_judged']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
