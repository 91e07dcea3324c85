"""One source's figures from a finished (repeated) CV of a multi-source recipe, pooled over its folds.

`lungcnn cv run OUT experiment=multisource` pools every source together; to compare the multi-source recipe with a
single-source one on that source's own question (IQ-OTH/NCCD: benign vs malignant, normal slices left out), this
reads each fold's report/predictions.csv and split.csv and prints, per repeat: slice ROC-AUC, series ROC-AUC (mean
of the 3 most suspicious slices of a series, as the series rule), and sensitivity / specificity over the slices
judged at each fold's operating point; series sensitivity / specificity at each fold's series threshold (the
series' score, over all its slices, against the threshold its report records under `series_rule`: the fitted
series threshold where calibrate fitted one, else the slice threshold); and the slices' expected calibration error
(calibrated probability, 15 bins, as every report).

    python scripts/cv_source_figures.py OUT [--source iqothnccd] [--drop "Normal cases"] [--report report]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from lungcnn.data.aggregation import aggregate
from lungcnn.metrics.classification import binary_metrics


def fold_table(fold: Path, report: str = "report") -> pd.DataFrame:
    table = pd.read_csv(fold / report / "predictions.csv", dtype={"file": str, "label": str, "decision": str})
    groups = pd.read_csv(fold / "split.csv", dtype={"file": str, "group": str}).set_index("file")["group"]
    figures = json.loads((fold / report / "report.json").read_text())
    threshold = figures.get("series_rule", {}).get("threshold", figures["threshold_calibrated"])
    return table.assign(group=table["file"].map(groups), threshold=threshold)


def figures(table: pd.DataFrame, positive: str = "malignant") -> dict[str, float]:
    y = (table["label"] == positive).to_numpy(int)
    p = table[f"probability_{positive}"].to_numpy(float)
    series = table.assign(y=y, p=p).groupby("group").agg(y=("y", "max"), p=("p", lambda v: aggregate("topk_mean", v, 3)),
                                                         threshold=("threshold", "first"))
    series_called = series["p"] >= series["threshold"]
    judged = table["decision"].isin(set(table["label"]))
    called, truth = (table["decision"] == positive)[judged], (table["label"] == positive)[judged]
    return {"slices": len(table), "positive_slices": int(y.sum()), "slice_roc_auc": roc_auc_score(y, p),
            "series": len(series), "positive_series": int(series["y"].sum()),
            "series_roc_auc": roc_auc_score(series["y"], series["p"]),
            "sensitivity_judged": f"{int((called & truth).sum())}/{int(truth.sum())}",
            "specificity_judged": f"{int((~called & ~truth).sum())}/{int((~truth).sum())}",
            "series_sensitivity": f"{int((series_called & (series['y'] == 1)).sum())}/{int(series['y'].sum())}",
            "series_specificity": f"{int((~series_called & (series['y'] == 0)).sum())}/{int((series['y'] == 0).sum())}",
            "slice_ece": binary_metrics(p, y)["ece"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the CV run folder (OUT/seed<s>/fold<k>/)")
    parser.add_argument("--source", default="iqothnccd")
    parser.add_argument("--drop", default="Normal cases", help="leave out files whose path contains this ('' keeps all)")
    parser.add_argument("--report", default="report", help="each fold's report folder (`lungcnn cv run --report NAME`)")
    args = parser.parse_args(argv)
    seeds = sorted(args.out.glob("seed*"))
    if not seeds:
        sys.exit(f"{args.out}: no seed*/fold*/ folders of a finished CV run")
    for seed in seeds:
        table = pd.concat([fold_table(f, args.report) for f in sorted(seed.glob("fold*"))], ignore_index=True)
        table = table[table["source"] == args.source]
        if args.drop:
            table = table[~table["file"].str.contains(args.drop, regex=False)]
        print(seed.name, {k: round(v, 3) if isinstance(v, float) else v for k, v in figures(table).items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
