"""Leave one source out: train on every source but one, test on the one never seen, for each source in turn.

A model judged on slices of the hospital it was trained in learns that hospital's export; the question a new
user asks is how it does on a source it never saw. `run` (``python -m lungcnn.cv run OUT --by-source ...``)
trains one job per source with ``data.holdout_source=<source>`` (one Hydra multirun, `OUT/<source>/`): the
held-out source is the whole test split, the others are split into train and val, grouped within each source.
Each job's best checkpoint is then calibrated on its validation split (images of the other sources; operating
point for the default target sensitivity, domain guard fitted on them) and evaluated on its held-out images,
read exactly as the data module reads them (each source's own rendering into the model's window), into
`OUT/<source>/holdout/` (report and predictions.csv with `source`), and `per_source_table` scores each source
with series-bootstrap intervals: ROC-AUC where the source has both classes, sensitivity and specificity at the
calibrated operating point, the share called positive (on a source of normal scans: the share of normal slices
called malignant) and the share not judged (out of domain, or no lungs in view). Finished steps are kept, so an
interrupted run resumes when started again.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lungcnn import CONF_DIR
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.per_source import markdown, per_source_table, scored_frame
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


def train_holdouts(out: Path, overrides: Sequence[str], names: Sequence[str]) -> None:
    """Train each held-out source's job that has no metrics.json yet, as one Hydra multirun."""
    todo = [n for n in names if not (out / n / "metrics.json").is_file()]
    if not todo:
        return
    cmd = [sys.executable, "-m", "lungcnn.train", "-m", *overrides, f"data.holdout_source={','.join(todo)}",
           "resume=true", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={out}",
           "hydra.sweep.subdir=${data.holdout_source}"]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training the held-out sources failed (exit {done.returncode}): {' '.join(cmd)}")


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
        seed: int = 0, calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (what is missing), predict each held-out source, score it; write and return OUT/by_source.json.
    `calibration`: `lungcnn calibrate`'s options (`lungcnn cv run --calibrate KEY=VALUE`), checked before training."""
    from lungcnn.evaluation.repeated import check_calibration

    check_calibration(calibration or {})
    out = Path(out)
    names = source_names(overrides)
    train_holdouts(out, overrides, names)
    frames = []
    for name in names:
        job = out / name
        frames.append(scored_frame(predict_holdout(job, ckpt, calibration), _groups(job / "split.csv")))
    table = per_source_table(pd.concat(frames, ignore_index=True), n_resamples, seed)
    summary = {"out": str(out), "overrides": list(overrides), "checkpoint": ckpt, "calibration": dict(calibration or {}),
               "sources": names,
               "n_resamples": n_resamples, "seed": seed, "per_source": table, "markdown": markdown(table)}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _groups(split: Path) -> dict[str, str]:
    frame = pd.read_csv(split, dtype={"file": str, "group": str})
    return dict(zip(frame["file"], frame["group"], strict=True))
