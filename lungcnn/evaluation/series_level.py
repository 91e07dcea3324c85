"""Series-level figures from a grouped cross-validation: which `SeriesRule` ranks patients' series best.

Every fold's test predictions (`report/predictions.csv`) are grouped into series by the fold's `split.csv`
group column; each series gets its slices' calibrated P(target) aggregated by each candidate rule, and its
label (the slices' majority label; IQ-OTH/NCCD labels whole cases). Pooled over folds, every series is tested
once, by the fold model that never saw it. Figures: series-level ROC-AUC with a 95% bootstrap interval over
series (stratified by class), the Brier score, and per-fold AUC (folds with both classes); the slice-level
AUC of the same predictions, with a series bootstrap, is given beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.data.aggregation import aggregate
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.crossval import find_runs, load_run
from lungcnn.inference.schema import FILE, LABEL, probability_column
from lungcnn.metrics.bootstrap import bootstrap_ci
from lungcnn.metrics.classification import binary_metrics
from lungcnn.spec import SeriesRule

CANDIDATES = (SeriesRule("max"), SeriesRule("topk_mean", 2), SeriesRule("topk_mean", 3), SeriesRule("topk_mean", 5),
              SeriesRule("noisy_or"), SeriesRule("mean"))


def slice_table(run_dirs: Sequence[str], target: str | None = None, report_dir: str = "report") -> pd.DataFrame:
    """All folds' readable test rows: fold, file, group, label (1 = target), p (calibrated P(target))."""
    parts = []
    for i, run_dir in enumerate(run_dirs):
        run = load_run(run_dir, report_dir)
        table, split = run["predictions"], run["split"]
        if table is None or split is None:
            raise LungCNNInputError(f"{run_dir}: needs {report_dir}/predictions.csv and split.csv")
        target = target or table.class_names[-1]
        frame = table.frame[table.readable]
        groups = dict(zip(split["file"], split["group"].astype(str)))
        parts.append(pd.DataFrame({"fold": run["fold"] if run["fold"] is not None else i, "file": frame[FILE],
                                   "group": [groups.get(f, f) for f in frame[FILE]],
                                   "label": (frame[LABEL] == target).astype(int),
                                   "p": frame[probability_column(target)].astype(float)}))
    return pd.concat(parts, ignore_index=True)


def series_scores(slices: pd.DataFrame, rule: SeriesRule) -> pd.DataFrame:
    """One row per (fold, group): label (majority of its slices), n slices, score under `rule`."""
    rows = [{"fold": fold, "group": group, "label": int(part["label"].mean() >= 0.5), "n": len(part),
             "mixed": part["label"].nunique() > 1, "score": aggregate(rule.method, part["p"].to_numpy(), rule.k)}
            for (fold, group), part in slices.groupby(["fold", "group"], sort=True)]
    return pd.DataFrame(rows)


def _auc(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    m = binary_metrics(p, y)
    return {"roc_auc": float(m["roc_auc"]), "brier": float(m["brier"])}


def compare_rules(run_dirs: Sequence[str], rules: Sequence[SeriesRule] = CANDIDATES, target: str | None = None,
                  report_dir: str = "report", n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Series-level figures of each rule on the same folds, and the slice-level figures beside them."""
    return score_rules(slice_table(run_dirs, target, report_dir), rules, n_resamples, seed)


def score_rules(slices: pd.DataFrame, rules: Sequence[SeriesRule] = CANDIDATES, n_resamples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """`compare_rules` on a slice table (fold, group, label 0/1, p): out-of-fold predictions from any source."""
    p, y = slices["p"].to_numpy(), slices["label"].to_numpy()
    slice_ci = bootstrap_ci(_auc, p, y, n_resamples, seed, groups=(slices["fold"].astype(str) + "/" + slices["group"]).to_numpy())
    out: dict[str, Any] = {"slices": {"n": len(slices), **_auc(p, y), "roc_auc_ci": slice_ci["roc_auc"]}, "rules": {}}
    for rule in rules:
        series = series_scores(slices, rule)
        s, ys = series["score"].to_numpy(), series["label"].to_numpy()
        ci = bootstrap_ci(_auc, s, ys, n_resamples, seed)
        per_fold = [_auc(part["score"].to_numpy(), part["label"].to_numpy())["roc_auc"]
                    for _, part in series.groupby("fold") if part["label"].nunique() == 2]
        out["rules"][f"{rule.method}" + (f" k={rule.k}" if rule.method == "topk_mean" else "")] = {
            **_auc(s, ys), "roc_auc_ci": ci["roc_auc"], "fold_auc_mean": float(np.mean(per_fold)),
            "fold_auc_std": float(np.std(per_fold)), "folds_with_both_classes": len(per_fold)}
        out["series"] = {"n": len(series), "positive": int(ys.sum()), "negative": int((ys == 0).sum()),
                         "mixed_labels": int(series["mixed"].sum())}
    return out


def markdown(result: dict[str, Any]) -> str:
    n = result["series"]
    lines = [f"Series: {n['n']} ({n['positive']} positive, {n['negative']} negative; {n['mixed_labels']} with mixed "
             f"slice labels). Slices: {result['slices']['n']}, slice-level ROC-AUC {_ci(result['slices'])}.", "",
             "| series rule | series ROC-AUC (95% CI) | Brier | per-fold AUC (mean ± sd) |", "|---|---|---|---|"]
    for name, r in result["rules"].items():
        lines.append(f"| {name} | {_ci(r)} | {r['brier']:.3f} | {r['fold_auc_mean']:.3f} ± {r['fold_auc_std']:.3f} "
                     f"({r['folds_with_both_classes']} folds) |")
    return "\n".join(lines)


def _ci(entry: dict[str, Any]) -> str:
    low, high = entry["roc_auc_ci"]
    return f"{entry['roc_auc']:.3f} ({low:.3f}–{high:.3f})"


def from_multirun(multirun: str, **kwargs: Any) -> dict[str, Any]:
    return compare_rules([str(r) for r in find_runs(multirun)], **kwargs)
