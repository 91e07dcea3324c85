"""Leave one source out: train on every source but one, test on the one never seen, for each source in turn.

A model judged on slices of the hospital it was trained in learns that hospital's export; the question a new
user asks is how it does on a source it never saw. `run` (``python -m lungcnn.cv run OUT --by-source ...``)
trains one job per seed and source with ``seed=<s> data.holdout_source=<source>`` (one Hydra multirun,
`OUT/seed<s>/<source>/`): the held-out source is the whole test split, the others are split into train and val,
grouped within each source. The seed draws that inner split, which decides which of a source's few normal slices the
head trains on: one seed's held-out ROC-AUC moved by up to 0.12 between seeds (docs/results/sources.md), so a run
has `repeats` seeds (3 by default, like the repeated CV) and reports each and their spread.
Each job's best checkpoint is then calibrated on its validation split (images of the other sources; operating
point for the default target sensitivity, domain guard fitted on them) and evaluated on its held-out images,
read exactly as the data module reads them (each source's own rendering into the model's window), into
`OUT/seed<s>/<source>/holdout/` (report and predictions.csv with `source`), and `per_source_table` scores each
source with series-bootstrap intervals: ROC-AUC where the source has both classes, sensitivity and specificity at
the calibrated operating point, the share called positive (on a source of normal scans: the share of normal slices
called malignant) and the share not judged (out of domain, or no lungs in view). Finished steps are kept, so an
interrupted run resumes when started again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lungcnn import CONF_DIR
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.per_source import FIGURES, markdown, per_source_table, scored_frame
from lungcnn.fileio import write_json

SUMMARY_FILE = "by_source.json"
HOLDOUT_DIR = "holdout"
PREDICTIONS = "predictions.csv"


def source_names(overrides: Sequence[str]) -> list[str]:
    """The names of `data.sources` in the training config these overrides compose."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if not o.startswith("hydra")])
    sources = OmegaConf.to_container(cfg.data, resolve=False).get("sources") or []
    names = [s.get("name") for s in sources if isinstance(s, dict)]
    if len(names) < 2:
        raise LungCNNInputError(f"--by-source needs data.sources with at least 2 sources (experiment=multisource), got {names}")
    return names


def job_dir(out: Path, seed: int, source: str) -> Path:
    return out / f"seed{seed}" / source


def train_holdouts(out: Path, overrides: Sequence[str], names: Sequence[str], seeds: Sequence[int]) -> None:
    """Train each (seed, held-out source) job without a metrics.json (`repeated.train_missing`, into
    OUT/seed<s>/<source>)."""
    from lungcnn.evaluation.repeated import train_missing

    train_missing(out, overrides, seeds, "data.holdout_source", names, "", "the held-out sources")


def predict_holdout(job: Path, ckpt: str = "best", calibration: Mapping[str, Any] | None = None) -> Path:
    """The job's checkpoint calibrated on its validation split (the other sources) and evaluated on its held-out
    source (`lungcnn calibrate` with `calibration`'s options / `lungcnn evaluate`, each source read in its own
    rendering, through training's feature cache where the backbone was frozen); returns the evaluation's
    predictions.csv."""
    from lungcnn.calibration.fit import calibrate
    from lungcnn.evaluation.evaluate import evaluate
    from lungcnn.features.data import run_cache_dir

    out = job / HOLDOUT_DIR / PREDICTIONS
    if out.is_file():
        return out
    cache = run_cache_dir(job)
    calibrated = job / "checkpoints" / f"{ckpt}.calibrated.ckpt"
    calibrate(job / "checkpoints" / f"{ckpt}.ckpt", calibrated, overwrite=True, feature_cache=cache, **(calibration or {}))
    evaluate(calibrated, out_dir=str(job / HOLDOUT_DIR), n_resamples=200, feature_cache=cache,
             gradcam_images=0)
    return out


def run(out: str | Path, overrides: Sequence[str] = (), ckpt: str = "best", n_resamples: int = 1000,
        seed: int = 0, calibration: Mapping[str, Any] | None = None, repeats: int = 3,
        first_seed: int = 0) -> dict[str, Any]:
    """Train (what is missing), predict each held-out source, score it, for `repeats` seeds from `first_seed`; write and
    return OUT/by_source.json. `calibration`: `lungcnn calibrate`'s options (`lungcnn cv run --calibrate KEY=VALUE`),
    checked before training; `seed`: the bootstrap's."""
    from lungcnn.evaluation.repeated import check_calibration

    if repeats < 1:
        raise LungCNNInputError(f"--repeats must be >= 1, got {repeats}")
    if any(o.lstrip("+~").partition("=")[0] == "seed" for o in overrides):
        raise LungCNNInputError("leave seed= out of the overrides: --first-seed N --repeats R choose the seeds of a "
                                "by-source run (--first-seed N --repeats 1 for seed N alone)")
    check_calibration(calibration or {})
    out = Path(out)
    names = source_names(overrides)
    seeds = list(range(first_seed, first_seed + repeats))
    train_holdouts(out, overrides, names, seeds)
    tables = {}
    for s in seeds:
        frames = []
        for name in names:
            job = job_dir(out, s, name)
            frames.append(scored_frame(predict_holdout(job, ckpt, calibration), _groups(job / "split.csv")))
        tables[s] = per_source_table(pd.concat(frames, ignore_index=True), n_resamples, seed)
    over = over_seeds(tables)
    text = "\n\n".join([*(f"seed {s}\n\n{markdown(t)}" for s, t in tables.items()), spread_markdown(over, seeds)])
    summary = {"out": str(out), "overrides": list(overrides), "checkpoint": ckpt, "calibration": dict(calibration or {}),
               "sources": names, "seeds": seeds, "n_resamples": n_resamples, "seed": seed,
               "per_seed": {str(s): t for s, t in tables.items()}, "over_seeds": over, "markdown": text}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def over_seeds(tables: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per source and figure: each seed's value and their spread (`repeated.value_spread`; NaN where a source has no
    such figure, e.g. no ROC-AUC on normal scans)."""
    from lungcnn.evaluation.repeated import value_spread

    values: dict[str, dict[str, list[float]]] = {}
    for table in tables.values():
        for source, row in table.items():
            for figure in FIGURES:
                values.setdefault(source, {}).setdefault(figure, []).append(row[figure]["value"])
    return {source: {figure: value_spread(v) for figure, v in figures.items()} for source, figures in values.items()}


def spread_markdown(over: Mapping[str, Mapping[str, Mapping[str, Any]]], seeds: Sequence[int]) -> str:
    """The spread over seeds as markdown: per source and figure, mean (min-max) and each seed's value."""
    lines = [f"over seeds {', '.join(map(str, seeds))}", "", "| held-out source | figure | mean (min-max) | per seed |",
             "|---|---|---|---|"]
    for source, figures in over.items():
        for figure, e in figures.items():
            if not math.isnan(e["mean"]):
                per = " / ".join("-" if math.isnan(v) else f"{v:.3f}" for v in e["values"])
                lines.append(f"| {source} | {figure} | {e['mean']:.3f} ({e['min']:.3f}-{e['max']:.3f}) | {per} |")
    return "\n".join(lines)


def _groups(split: Path) -> dict[str, str]:
    frame = pd.read_csv(split, dtype={"file": str, "group": str})
    return dict(zip(frame["file"], frame["group"], strict=True))
