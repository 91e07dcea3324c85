"""Leave one source out: train on every source but one, test on the one never seen, for each source in turn.

A model judged on slices of the hospital it was trained in learns that hospital's export; the question a new
user asks is how it does on a source it never saw. `run` (``python -m lungcnn.cv run OUT --by-source ...``)
trains one job per source with ``data.holdout_source=<source>`` (one Hydra multirun, `OUT/<source>/`): the
held-out source is the whole test split, the others are split into train and val, grouped within each source.
Each job's best checkpoint then predicts its held-out images, read exactly as the data module reads them (each
source's own rendering into the model's window), into `OUT/<source>/holdout/predictions.csv` (with `source`),
and `per_source_table` scores each source with series-bootstrap intervals: ROC-AUC where the source has both
classes, sensitivity and specificity at the checkpoint's operating point, and the share called positive (on a
source of normal scans: the share of normal slices called malignant). Finished steps are kept, so an
interrupted run resumes when started again.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn import CONF_DIR
from lungcnn.errors import LungCNNInputError
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


def predict_holdout(job: Path, ckpt: str = "best") -> Path:
    """The job's checkpoint on its held-out source, read as the data module reads it; returns predictions.csv."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lungcnn.inference import schema
    from lungcnn.inference.predictor import Predictor

    out = job / HOLDOUT_DIR / PREDICTIONS
    if out.is_file():
        return out
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    datamodule = instantiate(cfg.data, split_file=str(job / "split.csv"), output_dir=None, _convert_="all")
    datamodule.setup("test")
    test = (datamodule.frame["split"] == "test").to_numpy()
    frame = datamodule.frame[test]
    predictor = Predictor.from_checkpoint(job / "checkpoints" / f"{ckpt}.ckpt")
    predictions = predictor.predict_images(datamodule.images[test], frame["file"].tolist())
    labels = [datamodule.class_names[y] for y in frame["label"]]
    schema.write_csv(out, predictor.task, predictions, labels, frame["source"].tolist())
    return out


def scored_frame(predictions: Path, split: Path, positive: str) -> pd.DataFrame:
    """One held-out source's predictions with the columns `per_source_table` needs (group from split.csv)."""
    from lungcnn.inference.schema import DECISION, FILE, LABEL, SOURCE, Table, probability_column

    table = Table.read(predictions)
    frame = table.frame[table.readable]
    groups = pd.read_csv(split, dtype={"file": str, "group": str}).set_index("file")["group"]
    return pd.DataFrame({
        "source": frame[SOURCE].to_numpy(), "group": frame[FILE].map(groups).to_numpy(),
        "label": (frame[LABEL] == positive).astype(int).to_numpy(),
        "probability": frame[probability_column(positive)].to_numpy(float),
        "called": (frame[DECISION] == positive).astype(int).to_numpy()})


def _figures(pc: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ROC-AUC of the probability, sensitivity and specificity of the call, the share called positive."""
    from sklearn.metrics import roc_auc_score

    p, called = pc[:, 0], pc[:, 1].astype(bool)
    pos, neg = y == 1, y == 0
    return {"roc_auc": float(roc_auc_score(y, p)) if pos.any() and neg.any() else math.nan,
            "sensitivity": float(called[pos].mean()) if pos.any() else math.nan,
            "specificity": float((~called[neg]).mean()) if neg.any() else math.nan,
            "called_positive": float(called.mean())}


def per_source_table(frame: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per source: counts, and each figure of `_figures` with a 95% series-bootstrap interval (whole groups
    resampled within each class, since slices of one scan are not independent).

    `frame`: columns source, group, label (1 = positive), probability (of the positive class), called (0/1)."""
    from lungcnn.evaluation import bootstrap_ci

    out = {}
    for name, part in frame.groupby("source", sort=True):
        pc = part[["probability", "called"]].to_numpy(float)
        y = part["label"].to_numpy(int)
        figures = _figures(pc, y)
        ci = bootstrap_ci(_figures, pc, y, n_resamples=n_resamples, seed=seed, groups=part["group"].to_numpy())
        out[str(name)] = {"n": len(part), "n_positive": int(y.sum()), "n_negative": int((y == 0).sum()),
                          "n_groups": int(part["group"].nunique()),
                          **{k: {"value": v, "ci95": list(ci[k])} for k, v in figures.items()}}
    return out


def markdown(table: dict[str, dict[str, Any]], title: str = "held-out source") -> str:
    """The per-source table as markdown: value (95% CI) per figure."""
    keys = ("roc_auc", "sensitivity", "specificity", "called_positive")
    lines = [f"| {title} | images (pos/neg) | groups | " + " | ".join(keys) + " |", "|---" * (len(keys) + 3) + "|"]
    for name, row in table.items():
        cells = []
        for k in keys:
            v, (lo, hi) = row[k]["value"], row[k]["ci95"]
            cells.append("-" if math.isnan(v) else f"{v:.3f} ({lo:.3f}-{hi:.3f})")
        lines.append(f"| {name} | {row['n']} ({row['n_positive']}/{row['n_negative']}) | {row['n_groups']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(out: str | Path, overrides: Sequence[str] = (), ckpt: str = "best", n_resamples: int = 1000,
        seed: int = 0) -> dict[str, Any]:
    """Train (what is missing), predict each held-out source, score it; write and return OUT/by_source.json."""
    out = Path(out)
    names = source_names(overrides)
    train_holdouts(out, overrides, names)
    frames = []
    for name in names:
        job = out / name
        predictions = predict_holdout(job, ckpt)
        frames.append(scored_frame(predictions, job / "split.csv", _positive(predictions)))
    table = per_source_table(pd.concat(frames, ignore_index=True), n_resamples, seed)
    summary = {"out": str(out), "overrides": list(overrides), "checkpoint": ckpt, "sources": names,
               "n_resamples": n_resamples, "seed": seed, "per_source": table, "markdown": markdown(table)}
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _positive(predictions: Path) -> str:
    """The positive (last) class of a prediction table."""
    from lungcnn.inference.schema import Table

    return Table.read(predictions).class_names[-1]
