"""One report for a finished sweep: a table of every job, the best configuration, the objective per parameter.

Reads a Hydra multirun folder (each job's `.hydra/overrides.yaml`, `.hydra/config.yaml` and `metrics.json`) or an
Optuna study in its storage (every trial of every invocation that shared it). Writes, atomically:
`sweep.csv` and `sweep.md` (one row per job or trial), `best.json` (the best configuration and the command that
reruns it) and one `objective_vs_<parameter>.png` per swept parameter.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open, plain, write_json, write_text

DIRECTIONS = ("maximize", "minimize")
# Overrides that select the sweep itself, not the trained configuration: left out of the rerun command.
NOT_RERUN = ("hparams_search", "hydra")


@dataclass
class SweepTable:
    """Every job (or trial) of one sweep.

    Args:
        rows: one row per job: `job`, the override keys, `status`, the metrics, `objective`, `note`.
        params: the swept parameters (override keys whose value differs between jobs).
        objective: the metric the sweep optimised, e.g. "val/roc_auc".
        direction: "maximize" or "minimize".
        source: the multirun folder or the study's storage URL.
        overrides: per row, the overrides that rerun that job.
    """

    rows: pd.DataFrame
    params: list[str]
    objective: str
    direction: str
    source: str
    overrides: list[list[str]] = field(default_factory=list)

    def best(self) -> int | None:
        """Index of the row with the best measured objective, or None when no job measured it."""
        values = pd.to_numeric(self.rows["objective"], errors="coerce")
        finite = values[np.isfinite(values)]
        if finite.empty:
            return None
        return int(finite.idxmax() if self.direction == "maximize" else finite.idxmin())


def from_multirun(folder: str | Path, metric: str | None = None, direction: str | None = None) -> SweepTable:
    """Read every job under a multirun folder (`hydra.sweep.dir`).

    Args:
        folder: the sweep folder (it holds `multirun.yaml` and one folder per job).
        metric: the objective; default: the jobs' `optimized_metric`.
        direction: default: the sweeper's direction (Optuna), else maximize.
    """
    folder = Path(folder)
    jobs = sorted((p.parent.parent for p in folder.rglob(".hydra/overrides.yaml") if ".submitit" not in p.parts),
                  key=lambda p: _natural_key(p.relative_to(folder)))
    if not folder.is_dir() or not jobs:
        raise LungCNNInputError(f"{folder}: not a multirun folder (no job with .hydra/overrides.yaml under it)")
    first = jobs[0] / ".hydra"
    metric = metric or str(OmegaConf.load(first / "config.yaml").get("optimized_metric", "val/roc_auc"))
    direction = _direction(direction, OmegaConf.load(first / "hydra.yaml"))
    rows, reruns = [], []
    for job in jobs:
        overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        row: dict[str, Any] = {"job": str(job.relative_to(folder))}
        row.update(_parse_overrides(overrides))
        row.update(_job_metrics(job, metric, fast_dev_run=bool(OmegaConf.select(config, "trainer.fast_dev_run"))))
        rows.append(row)
        reruns.append([o for o in overrides if not o.lstrip("+~").startswith(NOT_RERUN)])
    frame = pd.DataFrame(rows)
    return SweepTable(frame, _swept(frame), metric, direction, str(folder), reruns)


def from_study(storage: str, study_name: str, metric: str = "objective") -> SweepTable:
    """Read every trial of an Optuna study (all invocations that shared its storage).

    Args:
        storage: the study's storage URL (`hydra.sweeper.storage`), e.g. sqlite:///study.db.
        study_name: `hydra.sweeper.study_name`.
        metric: a label for the objective (Optuna stores only its value).
    """
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise LungCNNInputError(f"no study {study_name!r} in {storage}") from None
    if len(study.directions) != 1:
        raise LungCNNInputError(f"study {study_name!r} has {len(study.directions)} objectives; the report covers one")
    direction = study.direction.name.lower()
    rows, reruns = [], []
    for trial in study.trials:
        fixed = {k: v for k, v in trial.user_attrs.items() if not k.startswith(NOT_RERUN)}
        value = trial.value if trial.value is not None and math.isfinite(trial.value) else math.nan
        note = "" if math.isfinite(value) else ("not measured" if trial.value is not None else trial.state.name.lower())
        rows.append({"job": f"trial {trial.number}", **fixed, **trial.params, "status": trial.state.name.lower(),
                     "objective": value, "note": note})
        reruns.append([f"{k}={v}" for k, v in {**fixed, **trial.params}.items()])
    if not rows:
        raise LungCNNInputError(f"study {study_name!r} in {storage} has no trials yet")
    frame = pd.DataFrame(rows)
    return SweepTable(frame, _swept(frame), metric, direction, storage, reruns)


def write_report(table: SweepTable, out_dir: str | Path) -> list[Path]:
    """Write sweep.csv, sweep.md, best.json and one PNG per swept parameter; return the paths written."""
    out = Path(out_dir)
    written = [out / "sweep.csv", out / "sweep.md", out / "best.json"]
    with atomic_open(written[0], "w", newline="") as f:
        table.rows.to_csv(f, index=False)
    best = table.best()
    write_text(written[1], format_markdown(table, best))
    write_json(written[2], _best_record(table, best))
    for param in table.params:
        path = out / f"objective_vs_{re.sub(r'[^A-Za-z0-9_.-]+', '_', param)}.png"
        plot_objective(table, param, path)
        written.append(path)
    return written


def format_markdown(table: SweepTable, best: int | None) -> str:
    """The table as Markdown, headed by the best configuration."""
    lines = [f"# Sweep report: {table.source}", "",
             f"{len(table.rows)} job(s); objective {table.objective} ({table.direction}); "
             f"swept: {', '.join(table.params) or 'nothing'}.", ""]
    fixed = [c for c in _override_columns(table.rows) if c not in table.params]
    if fixed:
        first = table.rows.iloc[0]
        lines += ["Same in every job: " + ", ".join(f"`{c}={_cell(first[c])}`" for c in fixed) + ".", ""]
    if best is None:
        lines += ["**Best configuration:** none: no job measured the objective (see the note column).", ""]
    else:
        row = table.rows.loc[best]
        lines += [f"**Best configuration:** job {row['job']}, {table.objective} = {_cell(row['objective'])}", "",
                  f"    python -m lungcnn.train {' '.join(table.overrides[best])}", ""]
    columns = ["job", *table.params, "status", "objective", "note", *(c for c in table.rows.columns if "/" in c)]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for _, row in table.rows.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_objective(table: SweepTable, param: str, path: Path) -> None:
    """Objective against one swept parameter (categories as given, a log axis for a wide positive range)."""
    x, y = table.rows[param], pd.to_numeric(table.rows["objective"], errors="coerce")
    measured = np.isfinite(y)
    fig = Figure(figsize=(5.5, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    numeric = pd.to_numeric(x, errors="coerce")
    if numeric.notna().all() and x.map(lambda v: not isinstance(v, bool)).all():
        positions = numeric
        if (numeric > 0).all() and numeric.max() / numeric.min() >= 10:
            ax.set_xscale("log")
    else:
        labels = sorted({str(v) for v in x}, key=_natural_key)
        positions = x.map(lambda v: labels.index(str(v)))
        ax.set_xticks(range(len(labels)), labels)
    ax.scatter(positions[measured], y[measured], color="C0", label="job")
    best = table.best()
    if best is not None:
        ax.scatter([positions[best]], [y[best]], color="C3", marker="*", s=150, label="best")
        ax.legend(loc="best")
    if not measured.any():
        ax.text(0.5, 0.5, "objective not measured in any job", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel=param, ylabel=table.objective, title=f"{table.objective} vs {param}")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")


def format_summary(table: SweepTable, written: list[Path]) -> str:
    best = table.best()
    head = (f"{len(table.rows)} job(s) from {table.source}; best: "
            + ("none measured" if best is None else f"{table.rows.loc[best, 'job']} "
               f"({table.objective} = {_cell(table.rows.loc[best, 'objective'])})"))
    return "\n".join([head, *(f"wrote {p}" for p in written)])


def _job_metrics(job: Path, metric: str, fast_dev_run: bool) -> dict[str, Any]:
    path = job / "metrics.json"
    if not path.is_file():
        return {"status": "no metrics.json", "objective": math.nan, "note": "failed or unfinished"}
    result = json.loads(path.read_text())
    flat = {f"{split}/{k}": v for split in ("val", "test") for k, v in (result.get(split) or {}).items()}
    value = flat.get(metric)
    value = math.nan if value is None else float(value)  # null: a figure the run could not define
    note = "fast_dev_run: not measured" if fast_dev_run else ("" if math.isfinite(value) else f"no {metric}")
    return {"status": "done", **flat, "objective": math.nan if fast_dev_run else value, "note": note}


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: o.value() for o in parsed if not o.is_delete()}


def _override_columns(frame: pd.DataFrame) -> list[str]:
    # Metric columns are "split/name"; the others are bookkeeping.
    return [c for c in frame.columns if c not in ("job", "status", "objective", "note") and "/" not in c]


def _swept(frame: pd.DataFrame) -> list[str]:
    return [c for c in _override_columns(frame) if frame[c].astype(str).nunique(dropna=False) > 1]


def _direction(direction: str | None, hydra_yaml: Any) -> str:
    direction = direction or OmegaConf.select(hydra_yaml, "hydra.sweeper.direction") or "maximize"
    if str(direction) not in DIRECTIONS:
        raise LungCNNInputError(f"direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    return str(direction)


def _best_record(table: SweepTable, best: int | None) -> dict[str, Any]:
    record: dict[str, Any] = {"source": table.source, "objective": table.objective, "direction": table.direction,
                              "jobs": len(table.rows), "best": None}
    if best is not None:
        row = table.rows.loc[best]
        record["best"] = {"job": row["job"], "value": float(row["objective"]),
                          "params": {p: plain(row[p], finite=False) for p in table.params}, "overrides": table.overrides[best],
                          "command": "python -m lungcnn.train " + " ".join(table.overrides[best])}
    return record


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _natural_key(value: Any) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(value))]
