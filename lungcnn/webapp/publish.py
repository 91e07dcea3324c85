"""Publishing a model to ship (`lungcnn publish CALIBRATED_CKPT OUT.ckpt --data-root DIR`): a small file and its card.

What `make reference-model` runs after training and calibrating. It writes

- `OUT.ckpt`: the calibrated checkpoint with its floating-point tensors in float16 (weights and the domain guard's
  feature bank; a 2.2M-parameter MobileNetV2 is about 5 MB), loadable wherever a checkpoint is (`Predictor`,
  `lungcnn-predict --ckpt`, the page, ONNX export): loading casts the weights back to float32;
- `OUT.split.csv`: the training run's split (file names, labels, series groups), so that the figures can be
  reproduced; the checkpoint's data paths point to it and to DIR as given (relative paths resolve against the
  folder commands run from: the repository's root);
- the test figures of THIS file (float16 weights, not the float32 run it came from) on that split, recorded in its
  spec as `lungcnn.evaluate` does (the full report goes to the run's `report_published/`), and `OUT.md`, the
  model card, generated from the spec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.evaluate import evaluate
from lungcnn.fileio import write_bytes, write_text
from lungcnn.inference.predictor import Predictor
from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint
from lungcnn.webapp.uploads import model_card

MAX_BYTES = 10 * 1024 * 1024


def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors as float16 (integer buffers such as batch norm's counters stay as they are)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def publish(ckpt: str | Path, out: str | Path, data_root: str | None, recipe: str = "", n_resamples: int = 1000,
            report_dir: str | Path | None = None) -> dict[str, Any]:
    """Write OUT.ckpt (float16), OUT.split.csv and OUT.md; return the test report of the written file.

    Args:
        ckpt: a calibrated checkpoint whose spec names its split file.
        out: the file to write; OUT.split.csv and OUT.md go beside it.
        data_root: the data folder as OUT's spec should name it (None for a model trained on data.sources: each
            source's folder is named relative to the folder commands run from).
        recipe: how the model was made, in words, for the card.
        n_resamples: bootstrap resamples of the test figures' intervals.
        report_dir: the full test report (default: the run's `report_published/`, next to `checkpoints/`).
    """
    ckpt, out = Path(ckpt), Path(out)
    spec, state = load_checkpoint(ckpt)
    if not spec.is_calibrated:
        raise LungCNNInputError(f"{ckpt} is not calibrated: run `python -m lungcnn.calibrate ckpt={ckpt}` first")
    if data_root is None and not spec.data.get("sources"):
        raise LungCNNInputError("--data-root is needed: the data folder as the published file should name it")
    split_src = Path(spec.data.get("split_file") or "")
    if not split_src.is_file():
        raise LungCNNInputError(f"{ckpt}: its split file {split_src} is missing; publish from the training run's folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    split_out = out.with_suffix(".split.csv")
    write_bytes(split_out, split_src.read_bytes())
    data = {**spec.data, "root": data_root, "split_file": str(split_out)}
    if spec.data.get("sources"):
        # Each source's folder as the commands see it from the repository's root, like data_root.
        data.update(root=None, sources=[{**s, "root": os.path.relpath(s["root"])} for s in spec.data["sources"]])
    save_checkpoint(out, spec.replace(data=data, metrics={}, metric_values={}), half(state))
    size = out.stat().st_size  # checked before the evaluation (a minute of work) that a refused file would waste
    if size > MAX_BYTES:
        raise LungCNNInputError(f"{out} is {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB a shipped model may take")
    run_dir = ckpt.resolve().parent.parent  # a checkpoint lives in RUN/checkpoints/
    report = evaluate(out, out_dir=str(report_dir or run_dir / "report_published"), n_resamples=n_resamples)
    per_source = (report.get("per_source") or {}).get("markdown", "")
    write_text(out.with_suffix(".md"), model_card_markdown(out, split_out, recipe, run_seed(run_dir), per_source))
    print(f"wrote {out} ({size / 2**20:.1f} MiB), {split_out} and {out.with_suffix('.md')}", flush=True)
    return report


def run_seed(run_dir: Path) -> int | None:
    """The seed a training run recorded in its `metrics.json`, if any (None for a folder that is not a run)."""
    try:
        return int(json.loads((run_dir / "metrics.json").read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


NORMAL_SLICES = {
    "drop": "Benign and malignant slices only (normal slices dropped).",
    "negative": "Normal slices counted as not malignant (label 0).",
    "class": "Normal slices as a class of their own.",
}


def split_table(split_file: Path, class_names: Sequence[str]) -> str:
    """Images, series and classes per split, as a markdown table."""
    frame = pd.read_csv(split_file)
    rows = ["| split | images | series | per class |", "|---|---|---|---|"]
    for name in ("train", "val", "test"):
        part = frame[frame["split"] == name]
        classes = ", ".join(f"{class_names[k]} {v}" for k, v in part["label"].value_counts().sort_index().items())
        rows.append(f"| {name} | {len(part)} | {part['group'].nunique()} | {classes} |")
    return "\n".join(rows)


def model_card_markdown(ckpt: Path, split_file: Path, recipe: str, seed: int | None = None,
                        per_source: str = "") -> str:
    """The model card: what the page shows (lungcnn.webapp.uploads.model_card) plus data, split and limits.

    `per_source`: the test figures per source (markdown, `lungcnn.evaluation.per_source`) of a model trained on
    several sources."""
    predictor = Predictor.from_checkpoint(ckpt)
    card = model_card(predictor)
    details = "\n".join(f"- **{k}**: {v}" for k, v in card["details"].items() if k != "Test results")
    figures = "\n".join(f"| {k} | {v} |" for k, v in card["metrics"].items())
    normal = NORMAL_SLICES.get(predictor.spec.data.get("normal_as", ""), "")
    seeded = f"seed {seed}" if seed is not None else "seed not recorded"
    sources = predictor.spec.data.get("sources") or []
    scope, data = (_several_sources(sources, predictor.class_names) if sources else (IQOTHNCCD_SCOPE, IQOTHNCCD_DATA))
    by_source = ("\n\nPer source (test split; sensitivity and specificity over the slices judged):\n\n" + per_source
                 if per_source else "")
    return f"""# Model card: `{ckpt.name}`

Generated by `python -m lungcnn.publish` (`make reference-model`); do not edit by hand.

## Intended use
{card['intended_use']} {scope}

## Model
{details}

## Data
{data}
{normal} Split by series (no series in two splits), {seeded}, saved as `{split_file.name}`:

{split_table(split_file, predictor.class_names)}

## Test figures (this file, float16 weights, at its operating threshold)
95% intervals from a stratified bootstrap over test images; slices of one series are not independent, so they
are too narrow. The test split holds only a few series of some classes: read the intervals. Repeated grouped
cross-validation (docs/results/) is the better estimate of how the recipe does on new patients, and
leave-one-source-out (docs/results/sources.md) of how it does on a source it never saw. A series
(`lungcnn-predict --series-out`, the page's series mode) is judged by its "Series decision" rule above.

| figure | value |
|---|---|
{figures}{by_source}

## How it was made
{recipe or 'see the README: A reference model'}
"""


IQOTHNCCD_SCOPE = """It answers one question for a single axial lung CT slice (or a series of them): benign or
malignant, with a calibrated probability, for images like its training images (IQ-OTH/NCCD: one hospital pair in
Iraq, one Siemens SOMATOM scanner, JPEG slices rendered with a soft-tissue window).

**Not for**: screening or diagnosis without a clinician; normal-versus-abnormal triage (it never saw normal slices
as a class: it was trained on benign and malignant cases only); other modalities, other body parts, other
scanners or windows without re-validation; children; any population unlike the training data. Images unlike the
training images are flagged by the domain guard, but no guard catches everything."""

IQOTHNCCD_DATA = """The development part of the IQ-OTH/NCCD lung cancer dataset as shipped in `../shared/data/iqothnccd-dev`
(Iraq-Oncology Teaching Hospital / National Center for Cancer Diseases, 2019; H. Alyasriy and M. Al-Huseiny,
"The IQ-OTH/NCCD lung cancer dataset", Mendeley Data, doi:10.17632/bhmdr45bh2; published there under CC BY 4.0,
which we could not re-check from this machine: check it before reuse)."""


def _several_sources(sources: Sequence[dict[str, Any]], class_names: Sequence[str]) -> tuple[str, str]:
    """The card's scope and data sections of a model trained on several sources (`data.sources`)."""
    names = ", ".join(s["name"] for s in sources)
    scope = f"""It answers one question for a single axial chest CT slice (or a series of them): {class_names[-1]} or
{" / ".join(class_names[:-1])} (benign and normal slices are both "{class_names[0]}"), with a calibrated probability,
for chest CT like its training sources ({names}), each rendered into one soft-tissue window.

**Not for**: screening or diagnosis without a clinician; telling benign from normal; other modalities, other body
parts, children, or any population unlike the training sources without re-validation. A few public sources are
not the world's scanners: images unlike the training images are flagged by the domain guard, slices without lungs
in view are not judged, but no guard catches everything."""
    rows = ["| source | what it is (provenance, licence) | classes (folder: class) | rendering | groups |",
            "|---|---|---|---|---|"]
    for s in sources:
        folders = ", ".join(f"{k}: {v}" for k, v in s.get("class_folders", {}).items())
        window = s.get("window")
        rendering = f"{window['level']:g}/{window['width']:g} HU export" if isinstance(window, dict) else str(window)
        rows.append(f"| {s['name']} | {s.get('about') or 'not recorded'} | {folders} | {rendering} | {s.get('groups')} |")
    return scope, "Trained on several chest CT sources, each re-windowed into the model's window:\n\n" + "\n".join(rows) + "\n"
