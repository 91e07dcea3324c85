"""Pool a grouped k-fold cross-validation: per-fold test metrics as mean ± std, pooled predictions with CIs.

One test split of ~160 images says little; k folds use every image once as test data. The folds are one
Hydra multirun (each job trains on k-1 folds and tests on its own fold; no group spans two folds), each
fold calibrated and evaluated (`<job>/report/predictions.csv`, lungcnn's prediction schema); then
`python -m lungcnn.cv summary --multirun DIR` (`python -m lungcnn.cv run` is the whole loop).

- Per-fold: mean and sample standard deviation (ddof=1) over folds of every number in metrics.json's "test".
- Pooled: all folds' predictions together, with percentile bootstrap 95% intervals (`bootstrap_ci`) that
  resample whole series (the `group` column of split.csv, stratified by class), since slices of one scan are
  not independent. Binary: `binary_metrics` at 0.5 on the uncalibrated and the calibrated probability of
  the positive (last) class. K classes: the report's figures (balanced accuracy, macro F1, per-class and
  pairwise AUCs such as benign vs normal); uncalibrated decisions are the argmax of the class-balanced
  output, calibrated ones each fold's own decisions (the `decision` column its checkpoint wrote). Pooling
  assumes the folds' probabilities are on one scale (AUCs); the spread over folds shows how much a single
  split can move.
- Checks from each fold's split.csv: no image in two test folds, no group in both train and test.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import binary_metrics
from lungcnn.evaluation.results import Predictions, Scored
from lungcnn.fileio import plain
from lungcnn.inference.schema import Table

PREDICTIONS = "predictions.csv"
KINDS = ("uncalibrated", "calibrated")
DECISION_METRICS = ("sensitivity", "specificity", "accuracy", "precision", "f1")
SUMMARY_FILE = "cv_summary.json"


def find_runs(multirun_dir: str | Path) -> list[Path]:
    """Job folders of a Hydra multirun (those with a metrics.json), in job-number order."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise LungCNNInputError(f"multirun folder not found: {root}")
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "metrics.json").is_file()]
    if not runs:
        raise LungCNNInputError(f"{root}: no job folder with a metrics.json (did the multirun finish?)")
    return sorted(runs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def load_run(run_dir: str | Path, report_dir: str = "report") -> dict[str, Any]:
    """One fold: its test metrics, fold number (from Hydra's overrides), split and predictions if present."""
    run = Path(run_dir)
    path = run / "metrics.json"
    if not path.is_file():
        raise LungCNNInputError(f"{run}: no metrics.json (not a finished lungcnn.train run)")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    test = metrics.get("test")
    if not isinstance(test, dict) or not test:
        raise LungCNNInputError(f"{path}: no test metrics (was it trained with test=false?)")
    split = run / "split.csv"
    preds = run / report_dir / PREDICTIONS
    return {
        "dir": str(run),
        "fold": _fold_of(run),
        "test": {k: float(v) for k, v in test.items() if isinstance(v, int | float) and not isinstance(v, bool)},
        "split": pd.read_csv(split, dtype={"file": str, "group": str, "split": str}) if split.is_file() else None,
        "predictions": Table.read(preds) if preds.is_file() else None,
    }


def _fold_of(run: Path) -> int | None:
    overrides = run / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    for item in yaml.safe_load(overrides.read_text(encoding="utf-8")) or []:
        key, _, value = str(item).lstrip("+~").partition("=")
        if key == "data.fold" and value.strip().isdigit():
            return int(value)
    return None


def fold_statistics(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample std (ddof=1; NaN for one fold) and per-fold values of every test metric."""
    names = sorted({k for r in runs for k in r["test"]})
    out = {}
    for name in names:
        values = np.array([r["test"].get(name, math.nan) for r in runs], dtype=np.float64)
        kept = values[~np.isnan(values)]
        out[name] = {"mean": float(kept.mean()) if kept.size else math.nan,
                     "std": float(kept.std(ddof=1)) if kept.size > 1 else math.nan,
                     "n_folds": int(kept.size), "values": values.tolist()}
    return out


def split_checks(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Do the folds form a clean cross-validation: disjoint test sets, no group across train and test?"""
    splits = [r["split"] for r in runs if r["split"] is not None]
    if len(splits) < len(runs):
        return {"checked": False, "reason": "a run has no split.csv"}
    tested = pd.concat([s.loc[s["split"] == "test", "file"] for s in splits])
    leaks = []
    for s in splits:
        train_groups = set(s.loc[s["split"] == "train", "group"])
        leaks.append(int(s.loc[s["split"] == "test", "group"].isin(train_groups).sum()))
    return {"checked": True, "test_images": int(len(tested)), "distinct_test_images": int(tested.nunique()),
            "images_in_several_test_folds": int(tested.duplicated(keep=False).sum()),
            "images_never_tested": int(len(set(splits[0]["file"]) - set(tested))),
            "test_images_sharing_a_group_with_train": leaks}


def pooled_metrics(runs: list[dict[str, Any]], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All folds' predictions together with series-bootstrap 95% CIs, when every fold has predictions."""
    missing = [r["dir"] for r in runs if r["predictions"] is None]
    if missing:
        return {"available": False,
                "reason": f"{len(missing)} of {len(runs)} run(s) lack predictions.csv (run lungcnn.evaluate), "
                          f"e.g. {missing[0]}"}
    pool = pool_predictions(runs)
    groups = pool.groups
    unit = "images" if (groups == pool.files).all() else "series"
    out: dict[str, Any] = {"available": True, "n": int(pool.labels.size), "n_series": int(pd.unique(groups).size),
                           "n_out_of_domain": out_of_domain(runs),
                           "bootstrap": {"n_resamples": n_resamples, "seed": seed, "stratified": True, "unit": unit}}
    if len(pool.names) > 2:
        return {**out, **_pooled_multiclass(pool, n_resamples, seed)}
    y = pool.labels
    out.update(kind="binary", n_malignant=int(y.sum()), threshold=0.5)
    for kind in KINDS:
        p = (pool.calibrated if kind == "calibrated" else pool.uncalibrated)[:, 1]
        out[kind] = Scored.of(binary_metrics, p, y, groups=groups, n_resamples=n_resamples, seed=seed).as_json()
    # Each fold's own decisions (its checkpoint's operating threshold), scored as 0/1 "probabilities" at 0.5.
    decided = pool.decisions.astype(np.float64)
    out["operating_point"] = Scored.of(binary_metrics, decided, y, groups=groups, n_resamples=n_resamples, seed=seed,
                                       keep=DECISION_METRICS).as_json()
    return out


def pool_predictions(runs: list[dict[str, Any]]) -> Predictions:
    """All folds' prediction tables (read rows only) as one `Predictions`; every fold must predict the same classes."""
    parts = [fold_predictions(r) for r in runs]
    if any(p.names != parts[0].names for p in parts):
        raise LungCNNInputError(f"the folds predict different classes: {[p.names for p in parts]}")
    return Predictions.concat(parts)


def out_of_domain(runs: list[dict[str, Any]]) -> int:
    """Readable test images the folds' domain guards flagged (left out of the pooled figures)."""
    return int(sum((r["predictions"].readable & ~r["predictions"].in_domain).sum() for r in runs))


def fold_predictions(run: dict[str, Any]) -> Predictions:
    """One fold's readable, in-domain rows as arrays, each image with its series (split.csv's group; the file
    itself without one). Rows the fold's domain guard flagged have no class decision; `out_of_domain` counts them."""
    table: Table = run["predictions"]
    table = Table(table.frame[table.readable & table.in_domain], run["dir"])
    split = run["split"]
    groups = dict(zip(split["file"], split["group"].astype(str))) if split is not None and "group" in split else {}
    files = table.frame["file"].astype(str).to_numpy()
    return Predictions(tuple(table.class_names), files, np.array([groups.get(f, f) for f in files], dtype=str),
                       table.label_indices(), table.probabilities(calibrated=False), table.probabilities(),
                       table.decision_indices())


def _pooled_multiclass(pool: Predictions, n_resamples: int, seed: int) -> dict[str, Any]:
    y = pool.labels
    out: dict[str, Any] = {"kind": "multiclass", "class_names": list(pool.names),
                           "class_counts": {n: int((y == i).sum()) for i, n in enumerate(pool.names)}}
    everything = np.arange(y.size)
    for kind in KINDS:
        calibrated = kind == "calibrated"

        def metric(idx: np.ndarray, _y: np.ndarray, calibrated: bool = calibrated) -> dict[str, float]:
            return pool.score(idx, calibrated)

        # Scored resamples its first argument: row indices, so each image keeps its fold's decision rule
        out[kind] = Scored.of(metric, everything, y, groups=pool.groups, n_resamples=n_resamples, seed=seed).as_json()
    return out


def aggregate(run_dirs: list[str | Path], n_resamples: int = 1000, seed: int = 0,
              report_dir: str = "report") -> dict[str, Any]:
    """The whole summary (== cv_summary.json) for these fold runs."""
    if not run_dirs:
        raise LungCNNInputError("no run folders given")
    runs = [load_run(d, report_dir) for d in run_dirs]
    folds = [r["fold"] for r in runs if r["fold"] is not None]
    if len(folds) != len(set(folds)):
        raise LungCNNInputError(f"the same data.fold appears in more than one run: {sorted(folds)}")
    return {
        "runs": [{"dir": r["dir"], "fold": r["fold"]} for r in runs],
        "n_folds": len(runs),
        "per_fold": fold_statistics(runs),
        "split_checks": split_checks(runs),
        "pooled": pooled_metrics(runs, n_resamples, seed),
    }


def format_table(summary: dict[str, Any]) -> str:
    k = summary["n_folds"]
    lines = [f"{'test metric':<16}{f'mean ± std over {k} folds':>28}   per fold", "-" * 72]
    for name, s in summary["per_fold"].items():
        per = " ".join(_num(v) for v in s["values"])
        lines.append(f"{name:<16}{_num(s['mean']):>17} ± {_num(s['std']):<8}   {per}")
    pooled = summary["pooled"]
    if pooled["available"] and pooled["kind"] == "multiclass":
        lines += ["", f"pooled predictions of all folds (n={pooled['n']}, {pooled['n_series']} series, "
                      f"95% bootstrap CI, resampling {pooled['bootstrap']['unit']})",
                  f"{'metric':<28}" + "".join(f"{c:>30}" for c in KINDS)]
        for name in pooled["calibrated"]["metrics"]:
            lines.append(f"{name:<28}" + "".join(f"{_with_ci(pooled[c], name):>30}" for c in KINDS))
    elif pooled["available"]:
        lines += ["", f"pooled predictions of all folds (n={pooled['n']}, {pooled['n_series']} series, threshold 0.5, "
                      f"95% bootstrap CI, resampling {pooled['bootstrap']['unit']})",
                  f"{'metric':<16}" + "".join(f"{c:>30}" for c in KINDS)]
        for name in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "brier", "ece"):
            cells = [_with_ci(pooled[c], name) for c in KINDS]
            lines.append(f"{name:<16}" + "".join(f"{c:>30}" for c in cells))
        lines += ["", "at each fold's own operating threshold (its checkpoint's decisions):"]
        lines += [f"{name:<16}{_with_ci(pooled['operating_point'], name):>30}" for name in DECISION_METRICS]
    else:
        lines += ["", f"pooled predictions: not available ({pooled['reason']})"]
    checks = summary["split_checks"]
    if checks.get("checked"):
        lines.append(f"\nsplits: {checks['distinct_test_images']} images tested, {checks['images_in_several_test_folds']} in "
                     f"several test folds, {checks['images_never_tested']} never tested; test images sharing a group "
                     f"with train per fold: {checks['test_images_sharing_a_group_with_train']}")
    return "\n".join(lines)


def _num(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def _with_ci(entry: dict[str, Any], name: str) -> str:
    lo, hi = entry["ci95"].get(name, (math.nan, math.nan))
    return f"{_num(entry['metrics'][name])} [{_num(lo)}, {_num(hi)}]"


def summarise_runs(run_dirs: Sequence[str | Path] = (), multirun: str | Path | None = None, n_resamples: int = 1000,
                   seed: int = 0, report_dir: str = "report") -> tuple[dict[str, Any], Path]:
    """Pool one cross-validation given as fold run folders or one multirun folder; return the summary (plain
    JSON types) and where it belongs by default (the multirun folder, else the runs' common parent)."""
    if bool(multirun) == bool(run_dirs):
        raise LungCNNInputError("give either RUN_DIRS or --multirun DIR (one of the two)")
    runs = find_runs(multirun) if multirun else [Path(d) for d in run_dirs]
    result = plain(aggregate(runs, n_resamples=n_resamples, seed=seed, report_dir=report_dir))
    home = Path(multirun) if multirun else Path(os.path.commonpath([str(Path(r).resolve()) for r in runs]))
    return result, home / SUMMARY_FILE
