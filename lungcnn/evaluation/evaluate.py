"""Evaluating a checkpoint (`lungcnn evaluate ckpt=PATH [data_root=FOLDER]`, `lungcnn.cli.evaluate`).

Runs the checkpoint's Predictor over the run's test split (or any labelled folder) and writes the
report: metrics before/after calibration at both thresholds with bootstrap intervals, the paper's
figures beside ours, plots, report.json, report.md and predictions.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lungcnn.data.labelled import labelled_images
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import build_report, looks
from lungcnn.evaluation.domain import domain_report, domain_summary
from lungcnn.evaluation.multiclass_report import build_multiclass_report
from lungcnn.evaluation.per_source import markdown, per_source_table, scored_frame
from lungcnn.fileio import write_json, write_text
from lungcnn.inference import schema
from lungcnn.inference.predictor import Predictor
from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint
from lungcnn.spec import ModelSpec


def evaluate(ckpt: str | Path, data_root: str | None = None, split: str = "test", out_dir: str | None = None,
             n_resamples: int = 1000, seed: int = 0, feature_cache: str | Path | None = None,
             gradcam_images: int = looks.DEFAULT_LIMIT) -> dict[str, Any]:
    """`feature_cache`: a feature cache folder (training's `feature_cache.dir`) to read a frozen backbone's
    pooled features from instead of computing them (`lungcnn.features.cache`). `gradcam_images`: at most this many
    judged images get a Grad-CAM heat map for the share of its mass inside the lung fields
    (`lungcnn.evaluation.looks`); 0 skips it."""
    ckpt = Path(ckpt)
    predictor = Predictor.from_checkpoint(ckpt)
    spec = predictor.spec
    data = labelled_images(spec.data, spec.preprocessing, spec.class_names, split, data_root)
    frame = data.frame
    predictions, logits = predictor.classify_labelled(data, predictor.cached_features(feature_cache, data))
    ok = np.array([p.ok for p in predictions])
    if not ok.any():
        raise LungCNNInputError(f"none of the {len(predictions)} images could be read")
    run_dir = ckpt.resolve().parent.parent
    out = Path(out_dir) if out_dir else run_dir / ("report" if data_root is None else f"report_{Path(data_root).name}")
    labels = frame["label"].to_numpy()
    sources = list(frame["source"]) if frame["source"].astype(bool).any() else None
    schema.write_csv(out / "predictions.csv", spec.task, predictions, [spec.class_names[y] for y in labels], sources)
    records = {"file": list(frame["file"][ok]), "label": labels[ok], "logit": logits,
               "prob": spec.probabilities(logits, calibrated=False), "prob_cal": spec.probabilities(logits)}
    where = f"the {split} split" if data_root is None else f"all images of {data_root}"
    skipped = int((~ok).sum())
    common = dict(out_dir=out, seed=seed, n_resamples=n_resamples, title=f"lungcnn evaluation: {ckpt.name} on {where}",
                  data_note=f"{spec.data_note}; {int(ok.sum())} images"
                  + (f"; {skipped} unreadable image(s) skipped" if skipped else ""))
    report, cells, summary = REPORTS[spec.task.name](records, spec, common)
    inside = [p.in_domain is not False for p in predictions if p.ok]
    report["domain_guard"] = domain_report(spec, records["prob_cal"], labels[ok], inside)
    # How a series of these slices would be decided (`inference.series`): its own threshold when calibrate fitted one.
    report["series_rule"] = {"rule": spec.series.describe(), "target": spec.series_target, "threshold": spec.series_threshold,
                             "fitted": spec.series.threshold is not None}
    if sources and spec.task.name == "binary":
        table = per_source_table(scored_frame(out / "predictions.csv", dict(zip(frame["file"], frame["group"], strict=True))),
                                 n_resamples, seed)
        report["per_source"] = {"table": table, "markdown": markdown(table, "source")}
        print(report["per_source"]["markdown"], flush=True)
    report["gradcam_lung_mass"] = looks.cam_lung_mass(predictor, data.images, predictions, gradcam_images,
                                                      n_resamples, seed)
    where_it_looks = looks.summary(report["gradcam_lung_mass"])
    write_text(out / "report.md", (out / "report.md").read_text(encoding="utf-8").rstrip("\n")
               + f"\n\n## Where the model looks\n\n{where_it_looks}\n")
    write_json(out / "report.json", report)
    print(summary + "\n" + domain_summary(report["domain_guard"]) + f"\n{where_it_looks}\nreport: {out / 'report.md'}",
          flush=True)
    if data_root is None and spec.is_calibrated:
        _record_in_model_card(ckpt, cells, f"{int(ok.sum())} test images ({where})")
    return report


def _binary_report(records: dict[str, Any], spec: ModelSpec, common: dict[str, Any]) -> tuple[dict, dict, str]:
    c = spec.calibration
    report = build_report(records, threshold_calibrated=spec.decision.threshold,
                          temperature=c.temperature if c.method == "temperature" else None, method=c.method, **common)
    at = report["results"]["calibrated"]["threshold_calibrated"]
    cells = {k: {"value": v, "ci95": at["ci95"].get(k)} for k, v in at["metrics"].items() if k != "confusion"}
    return report, cells, _summary(report)


def _multiclass_report(records: dict[str, Any], spec: ModelSpec, common: dict[str, Any]) -> tuple[dict, dict, str]:
    records = {**records, "decision": spec.decide(records["prob_cal"])}
    report = build_multiclass_report(records, class_names=spec.class_names, temperature=spec.calibration.temperature,
                                     rule=spec.decision, tta=spec.calibration.tta, **common)
    return report, report["results"]["calibrated"], _multiclass_summary(report)


REPORTS = {"binary": _binary_report, "multiclass": _multiclass_report}


def _record_in_model_card(ckpt: Path, cells: dict[str, Any], where: str) -> None:
    """Write the test figures into the calibrated checkpoint's metadata, so the app's model card shows them.

    Only calibrated checkpoints (slim files written by lungcnn.calibrate) are touched; the weights stay as
    they are and the file is replaced atomically."""
    spec, state = load_checkpoint(ckpt)
    metrics: dict[str, Any] = {"evaluated on": where}
    values: dict[str, float] = {}  # the same figures as numbers, for code that acts on them (the app's warnings)
    for key, cell in cells.items():
        value, ci = cell.get("value"), cell.get("ci95")
        if value is None or value != value:
            continue
        values[key] = float(value)
        metrics[key] = f"{value:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci and ci[0] is not None else "")
    save_checkpoint(ckpt, spec.replace(metrics=metrics, metric_values=values), state)
    print(f"recorded the test figures in the model card of {ckpt}", flush=True)


def _multiclass_summary(report: dict[str, Any]) -> str:
    cal = report["results"]["calibrated"]
    lines = [f"decisions: {report['decision_rule']}", f"{'calibrated':<34}{'value':>8}   95% CI"]
    for key, cell in cal.items():
        lo, hi = cell["ci95"]
        ci = f"{lo:.3f}-{hi:.3f}" if lo is not None else "n/a"
        lines.append(f"{key:<34}{_fmt(cell['value']):>8}   {ci}")
    return "\n".join(lines)


def _summary(report: dict[str, Any]) -> str:
    lines = [f"{'calibrated probabilities':<26}{'@0.5':>9}{'@threshold':>12}"]
    cal = report["results"]["calibrated"]
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc", "ece"):
        a, b = cal["threshold_0.5"]["metrics"][key], cal["threshold_calibrated"]["metrics"][key]
        lines.append(f"{key:<26}{_fmt(a):>9}{_fmt(b):>12}")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"
