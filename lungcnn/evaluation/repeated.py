"""Repeated grouped cross-validation: the yardstick for defaults and calibration on patients not seen in training.

R repeats x K folds. Each repeat has its own seed, which draws other folds (the grouped k-fold split is seeded)
and another initialisation and augmentation. Training runs as ONE Hydra multirun over `seed` and `data.fold`
(so a launcher such as `hydra/launcher=joblib` runs jobs in parallel), into `OUT/seed<s>/fold<k>`; then every
fold is calibrated on its own validation split and evaluated on its own test fold, and each repeat's folds are
pooled with a series bootstrap (`crossval.aggregate`). The summary gives every repeat's pooled figures and
their mean, standard deviation, minimum and maximum over repeats: a recipe is only as good as its worst repeat.
Finished steps are kept, so an interrupted run resumes when started again with the same arguments.
"""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lungcnn.calibration.fit import calibrate
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import crossfit as cf
from lungcnn.evaluation import crossval
from lungcnn.evaluation.evaluate import evaluate
from lungcnn.features.data import run_cache_dir
from lungcnn.fileio import plain, write_json
from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint

SUMMARY_FILE = "repeated_cv.json"
CHECKPOINTS = ("best", "last")


def job_dir(out: Path, seed: int, fold: int) -> Path:
    return out / f"seed{seed}" / f"fold{fold}"


def train_folds(out: Path, overrides: Sequence[str], seeds: Sequence[int], folds: int) -> None:
    """Train every (seed, fold) job without a metrics.json (`train_missing`, into OUT/seed<s>/fold<k>)."""
    train_missing(out, [*overrides, f"data.n_folds={folds}"], seeds, "data.fold", list(range(folds)), "fold", "the folds")


def train_missing(out: Path, overrides: Sequence[str], seeds: Sequence[int], key: str, values: Sequence[Any],
                  prefix: str, what: str) -> None:
    """Train every (seed, `key` value) job of OUT/seed<s>/<prefix><value> without a metrics.json; Hydra's launcher
    decides how (the repeated CV's folds, `key` data.fold; the by-source run's held-out sources, data.holdout_source).

    Seeds missing the same values share one multirun (a fresh run is one multirun of all jobs, so a parallel
    launcher sees them all). `resume=true`: a job cut short continues from its last.ckpt, one never started
    begins afresh, and finished jobs are not in the sweep at all (their checkpoints would refuse a new run).
    """
    missing: dict[tuple[Any, ...], list[int]] = {}
    for seed in seeds:
        todo = tuple(v for v in values if not (out / f"seed{seed}" / f"{prefix}{v}" / "metrics.json").is_file())
        if todo:
            missing.setdefault(todo, []).append(seed)
    for todo, group in missing.items():
        cmd = [sys.executable, "-m", "lungcnn.train", "-m", *overrides, f"seed={','.join(map(str, group))}",
               f"{key}={','.join(map(str, todo))}", "resume=true", "trainer.enable_progress_bar=false",
               f"hydra.sweep.dir={out}", f"hydra.sweep.subdir=seed${{seed}}/{prefix}${{{key}}}"]
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"training {what} failed (exit {done.returncode}): {' '.join(cmd)}")


def calibration_options(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` items (`lungcnn cv run --calibrate method=isotonic ...`) as calibrate()'s keyword arguments,
    values read as YAML scalars (`run` checks the keys before any training)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LungCNNInputError(f"--calibrate takes KEY=VALUE items, got {item!r}")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    return options


def check_calibration(calibration: Mapping[str, Any]) -> None:
    """Refuse options `lungcnn.calibration.fit.calibrate` does not take before hours of training, not after them."""
    known = set(inspect.signature(calibrate).parameters) - {"ckpt", "out", "overwrite", "feature_cache"}
    unknown = sorted(set(calibration) - known)
    if unknown:
        raise LungCNNInputError(
            f"{', '.join(unknown)}: not options of lungcnn.calibrate (it takes {', '.join(sorted(known))}). On the "
            "command line --calibrate takes every KEY=VALUE after it: put it after the Hydra overrides")


def calibrate_and_evaluate(job: Path, ckpt: str, calibration: Mapping[str, Any], report: str) -> None:
    """Calibrate one fold's checkpoint on its validation split and evaluate it on its test fold (skipped if done)."""
    if (job / report / crossval.PREDICTIONS).is_file():
        return
    calibrated = job / "checkpoints" / f"{ckpt}.{report}.ckpt"
    cache = run_cache_dir(job)  # a frozen backbone: its features are already in training's cache
    calibrate(job / "checkpoints" / f"{ckpt}.ckpt", calibrated, overwrite=True, feature_cache=cache, **calibration)
    evaluate(calibrated, out_dir=str(job / report), n_resamples=200, feature_cache=cache,
             gradcam_images=0)


def run(out: str | Path, overrides: Sequence[str] = (), repeats: int = 3, folds: int = 5, first_seed: int = 0,
        ckpt: str = "best", calibration: Mapping[str, Any] | None = None, report: str = "report",
        n_resamples: int = 1000) -> dict[str, Any]:
    """Train (what is missing), calibrate, evaluate and pool R x K folds; write and return the summary.

    Args:
        out: the run folder (`OUT/seed<s>/fold<k>` per job, `OUT/repeated_cv.json`).
        overrides: Hydra overrides for `lungcnn.train` (experiment, data.root, launcher...).
        repeats, folds: R >= 1 seeds from `first_seed`, K >= 2 folds each.
        ckpt: which checkpoint of each fold: `best` (highest validation AUC) or `last`.
        calibration: keyword arguments of `lungcnn.calibrate.calibrate` (method, decision, target_sensitivity...).
        report: each fold's report folder name (another name re-evaluates the same folds another way).
    """
    if repeats < 1 or folds < 2:
        raise LungCNNInputError(f"repeated CV needs repeats >= 1 and folds >= 2, got {repeats} x {folds}")
    if ckpt not in CHECKPOINTS:
        raise LungCNNInputError(f"--ckpt must be one of {CHECKPOINTS}, got {ckpt!r}")
    check_calibration(calibration or {})
    out = Path(out)
    seeds = list(range(first_seed, first_seed + repeats))
    jobs = {(s, k): job_dir(out, s, k) for s in seeds for k in range(folds)}
    train_folds(out, overrides, seeds, folds)
    for job in jobs.values():
        calibrate_and_evaluate(job, ckpt, dict(calibration or {}), report)
    per_repeat = {s: crossval.aggregate([jobs[s, k] for k in range(folds)], n_resamples, seed=0, report_dir=report)
                  for s in seeds}
    summary = {"out": str(out), "repeats": repeats, "folds": folds, "seeds": seeds, "checkpoint": ckpt,
               "calibration": dict(calibration or {}), "overrides": list(overrides),
               "per_repeat": {str(s): plain(v["pooled"]) for s, v in per_repeat.items()},
               "over_repeats": spread(per_repeat)}
    write_json(out / (SUMMARY_FILE if report == "report" else f"repeated_cv_{report}.json"), summary)
    return summary


def crossfit(out: str | Path, method: str = "platt", target_sensitivity: float = 0.98, report: str = "report",
             n_resamples: int = 1000, apply: str | Path | None = None, to: str | Path | None = None,
             ensemble: bool = False) -> dict[str, Any]:
    """Re-score a finished repeated CV with cross-fitted calibration (`lungcnn.evaluation.crossfit`); write
    OUT/repeated_cv_crossfit_<method>.json; with `apply`, write `to`: that checkpoint calibrated on every fold.
    With `ensemble`, also score the cross-repeat ensemble (each image: the mean logit of the R models that never
    saw its series, `crossfit.ensemble_folds`) under the same cross-fitted calibration, into ..._ensemble.json."""
    out = Path(out)
    jobs = sorted(out.glob("seed*/fold*"))
    seeds = sorted({int(j.parent.name.removeprefix("seed")) for j in jobs})
    if not jobs:
        raise LungCNNInputError(f"{out}: no seed<s>/fold<k> folders (run `python -m lungcnn.cv run {out} ...` first)")
    if apply is not None and ensemble:
        raise LungCNNInputError("--apply calibrates one checkpoint; it does not combine with --ensemble")
    folds = {s: cf.read_folds(sorted(out.glob(f"seed{s}/fold*")), report) for s in seeds}
    per_repeat = {s: {"pooled": cf.crossfit_folds(f, method, target_sensitivity, n_resamples)} for s, f in folds.items()}
    summary: dict[str, Any] = {
        "out": str(out), "repeats": len(seeds), "folds": len(jobs) // len(seeds), "seeds": seeds,
        "calibration": {"cross_fitted": method, "target_sensitivity": target_sensitivity},
        "per_repeat": {str(s): v["pooled"] for s, v in per_repeat.items()}, "over_repeats": spread(per_repeat)}
    name = f"repeated_cv_crossfit_{method}"
    if ensemble:
        members = cf.ensemble_folds(list(folds.values()))
        summary["ensemble"] = cf.crossfit_folds(members, method, target_sensitivity, n_resamples)
        q, y, g = (np.concatenate([getattr(f, name) for f in members]) for name in ("calibrated", "labels", "groups"))
        summary["ensemble"]["members_own_calibration"] = cf.scored(q, y, g, n_resamples)
        name += "_ensemble"
    write_json(out / f"{name}.json", summary)
    text = format_summary(summary)
    if apply is not None:
        if to is None or Path(to).resolve() == Path(apply).resolve():
            raise LungCNNInputError("--apply CKPT needs --to NEW_PATH (the input checkpoint is never replaced)")
        calibration, rule = cf.fit_pooled(jobs, method, target_sensitivity, report)
        spec, state = load_checkpoint(apply)
        save_checkpoint(to, cf.apply_to_checkpoint(spec, calibration, rule), state)
        text += (f"\n{apply} calibrated ({method}) on {calibration.details['fitted_on']}: threshold {rule.threshold:.4f}"
                 f"\nwrote {to}")
    return {**summary, "text": text}


def spread(per_repeat: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, std (ddof=1), min and max over repeats of every pooled figure (calibrated, operating point)."""
    rows: dict[str, list[float]] = {}
    for summary in per_repeat.values():
        pooled = summary["pooled"]
        for part in ("calibrated", "operating_point"):
            for key, value in (pooled.get(part) or {}).get("metrics", {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.setdefault(f"{part}/{key}", []).append(float(value))
    return {key: value_spread(values) for key, values in rows.items()}


def value_spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (ddof=1), min and max of the values that are not NaN (NaN where none is), and the values."""
    v = np.array([x for x in values if not math.isnan(x)])
    return {"mean": float(v.mean()) if v.size else math.nan, "std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "min": float(v.min()) if v.size else math.nan, "max": float(v.max()) if v.size else math.nan,
            "values": list(values)}


def format_summary(summary: Mapping[str, Any]) -> str:
    r = summary["repeats"]
    lines = [f"repeated grouped CV: {r} repeat(s) x {summary['folds']} folds, seeds {summary['seeds']}",
             f"{'pooled figure':<36}{'mean':>8}{'std':>8}{'min':>8}{'max':>8}   per repeat"]
    for key, s in summary["over_repeats"].items():
        per = " ".join(f"{v:.3f}" for v in s["values"])
        lines.append(f"{key:<36}" + "".join(f"{s[k]:>8.3f}" for k in ("mean", "std", "min", "max")) + f"   {per}")
    if "ensemble" in summary:
        lines.append(f"ensemble of the {r} repeats' models (mean logit), {summary['ensemble']['n']} images, 95% CI:")
        for part in ("calibrated", "operating_point", "members_own_calibration"):
            block = summary["ensemble"][part]
            for key, value in block["metrics"].items():
                if isinstance(value, (int, float)) and key in block["ci95"]:
                    lo, hi = block["ci95"][key]
                    lines.append(f"{part + '/' + key:<36}{value:>8.3f}   ({lo:.3f}-{hi:.3f})")
    return "\n".join(lines)
