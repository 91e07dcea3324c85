"""The clinicians' page logic, kept free of Streamlit so it can be tested and timed on its own.

Every uploaded file is analysed on its own: a bad file becomes one clear sentence for that file and
never stops the others, and an unexpected failure is logged with its traceback on the server while
the page shows a plain message. Uploaded bytes stay in memory; they are decoded by Pillow or pydicom
only (never unpickled).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.data.io import MAX_PIXELS
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.predictor import Prediction, Predictor
from lungcnn.spec import Calibration, DomainGuard, ModelSpec

log = logging.getLogger(__name__)

MIB = 2**20
DEMO_DIR = Path("outputs/demo/checkpoints")
DEMO_CHECKPOINTS = (DEMO_DIR / "best.calibrated.ckpt", DEMO_DIR / "best.ckpt")
# Trained on real CT, committed: what the page serves when no model is named. First the multi-source model
# (`make reference-model`), then the IQ-OTH/NCCD-only one (`make reference-model-iqothnccd`).
REFERENCE_CHECKPOINTS = (Path("models/lungcnn-chestct-binary.ckpt"), Path("models/lungcnn-iqothnccd-binary.ckpt"))
ENV_CHECKPOINT = "LUNGCNN_CKPT"
UPLOAD_TYPES = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "dcm")
MAX_MESSAGE = 300

INTENDED_USE = (
    "Decision support for a clinician reviewing lung CT images, not a diagnosis: the output is one input to the "
    "clinician's judgement and must never be the sole basis for care."
)
CALIBRATED_MEANS = (
    "Calibrated means the percentage was adjusted on held-out cases so that, of images given about 30%, about 3 in 10 "
    "were malignant."
)
NOT_IN_DOMAIN = (
    "This image does not look like the lung CT slices this model was trained on, so no result is given."
)
NO_LUNGS_IN_VIEW = "No lungs in view (a slice of the neck or abdomen, or an inverted image?): not judged."
NO_GUARD = "none: this model cannot tell when an image is unlike its training images, and answers every image"
UNCALIBRATED_MEANS = (
    "This model is not calibrated: its percentages were not checked against held-out cases and may be over- or "
    "under-confident."
)


@dataclass(frozen=True)
class UploadLimits:
    """Per-file limits, checked before any pixel buffer is allocated."""

    max_bytes: int = 50 * MIB
    max_pixels: int = MAX_PIXELS


@dataclass
class UploadResult:
    """One uploaded file's outcome; `message` says in one sentence why a bad file was refused."""

    name: str
    ok: bool
    message: str | None = None
    image: np.ndarray | None = None  # (S, S) uint8, what the model sees
    prediction: Prediction | None = None
    overlay: np.ndarray | None = None  # (S, S, 3) uint8 Grad-CAM overlay
    heatmap: np.ndarray | None = None  # (S, S) float in [0, 1]
    cam_note: str | None = None  # why the heat map is missing or blank
    threshold: float = float("nan")
    calibrated: bool = False

    @property
    def answered(self) -> bool:
        """Read, lungs in view and in the model's domain: the page may show a result (else `not_judged_message`)."""
        return self.ok and self.prediction is not None and self.prediction.answered

    @property
    def p_malignant(self) -> float:
        """Calibrated P(malignant), or NaN for a failed file or a checkpoint without that class."""
        if self.prediction is None:
            return float("nan")
        return float(self.prediction.probabilities.get("malignant", float("nan")))


def analyse_upload(predictor: Predictor, name: str, data: bytes, *, with_cam: bool = True,
                   limits: UploadLimits = UploadLimits()) -> UploadResult:
    """Read, classify and (optionally) explain one uploaded file; never raises for a bad file."""
    name = Path(name or "upload").name or "upload"  # a browser sends a bare name; never trust a path in it
    spec = predictor.spec
    base = {"threshold": spec.decision.threshold if spec.task.thresholded else float("nan"), "calibrated": spec.is_calibrated}
    try:
        image = predictor.load(data, name=name, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        prediction = predictor.predict_images(image[None], [name])[0]
    except LungCNNInputError as e:
        return UploadResult(name, False, one_sentence(str(e), name), **base)
    except Exception:
        log.exception("unexpected error analysing upload %r", name)
        return UploadResult(name, False, f"{name}: this file could not be analysed because of an unexpected error; "
                                         "please try another file or tell the system administrator.", **base)
    result = UploadResult(name, True, image=image, prediction=prediction, **base)
    if with_cam and result.answered:  # no heat map for an image the model gives no result on
        add_heatmap(predictor, result)
    return result


def not_judged_message(result: UploadResult) -> str:
    """Why a readable image gets no result: no lungs in view, or unlike the training images."""
    return NO_LUNGS_IN_VIEW if result.prediction is not None and result.prediction.lungs_in_view is False else NOT_IN_DOMAIN


def add_heatmap(predictor: Predictor, result: UploadResult) -> None:
    from lungcnn.inference.gradcam import gradcam

    try:
        cam = gradcam(predictor, result.image, towards=result.prediction.decision)
    except Exception:  # the prediction stands without its heat map
        log.exception("Grad-CAM failed for upload %r", result.name)
        result.cam_note = "The heat map could not be computed for this image."
        return
    result.overlay, result.heatmap = cam.overlay, cam.heatmap
    if cam.empty:
        result.cam_note = "No region stood out: the heat map is blank for this image."


def one_sentence(message: str, name: str) -> str:
    """One line that names the file, capped in length (pydicom's details can run long)."""
    text = " ".join(message.split())
    if not text.startswith(name):
        text = f"{name}: {text}"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1].rstrip() + "…"
    return text


# -- results -----------------------------------------------------------------------------------------
def format_percent(p: float) -> str:
    """A probability as a percentage for people: one decimal, never a misleading 0% or 100%."""
    if not np.isfinite(p):
        return "–"
    if p < 0.001:
        return "< 0.1%"
    if p > 0.999:
        return "> 99.9%"
    return f"{100 * p:.1f}%"


def headline(predictor: Predictor, result: UploadResult) -> tuple[str, str]:
    """(label, percentage) for the result card's big number: P(malignant) when the decision is a threshold on
    it, else the probability of the reported class."""
    pred = result.prediction
    if predictor.task.thresholded:
        return "Probability of malignancy", format_percent(_thresholded_probability(predictor, pred))
    return f"Probability of {pred.decision}", format_percent(pred.confidence)


def _thresholded_probability(predictor: Predictor, pred: Prediction) -> float:
    return pred.probabilities[predictor.class_names[-1]]


def decision_explanation(predictor: Predictor, result: UploadResult) -> str:
    """One or two sentences (Markdown) saying why the result card shows the class it shows."""
    return EXPLANATIONS[predictor.task.name](predictor, result)


def _threshold_explanation(predictor: Predictor, result: UploadResult) -> str:
    pred = result.prediction
    p = _thresholded_probability(predictor, pred)
    side = "at or above" if p >= result.threshold else "below"
    return (f"Reported as **{pred.decision}** because {format_percent(p)} is {side} the threshold of "
            f"**{format_percent(result.threshold)}**.")


def _weighted_explanation(predictor: Predictor, result: UploadResult) -> str:
    pred, rule = result.prediction, predictor.spec.decision
    probs = pred.probabilities
    listed = ", ".join(f"{name} {format_percent(probs[name])}" for name in predictor.class_names)
    likeliest = max(probs, key=probs.get)
    first = rule.priority
    if first is not None and pred.decision == first:
        text = (f"Probabilities: {listed}. Reported as **{first}** because P({first}) {format_percent(probs[first])} "
                f"is at or above the threshold of **{format_percent(rule.threshold)}**, set so that missed cancers "
                "are rare; please look at this image closely.")
    elif first is not None and likeliest == first:
        text = (f"Probabilities: {listed}. P({first}) is below the threshold of {format_percent(rule.threshold)}, "
                f"so the result is the likeliest of the other classes: **{pred.decision}**.")
    elif likeliest == pred.decision:
        text = f"Probabilities: {listed}. Reported as **{pred.decision}**, the most probable class."
    else:
        text = (f"Probabilities: {listed}. Reported as **{pred.decision}** although {likeliest} is more probable: "
                f"the rule weighs each class against how common it is, so that rarer findings such as "
                f"{pred.decision} are not overlooked. Please look at this image closely.")
    for a, b, auc in weakly_separated(predictor):
        if pred.decision in (a, b):
            other = b if pred.decision == a else a
            text += (f" This model tells {a} from {b} poorly (ROC-AUC {auc:.2f} on its test images): treat "
                     f"{pred.decision} versus {other} as uncertain.")
    return text


EXPLANATIONS = {"binary": _threshold_explanation, "multiclass": _weighted_explanation}


WEAK_AUC = 0.8


def weakly_separated(predictor: Predictor) -> list[tuple[str, str, float]]:
    """Class pairs whose recorded test AUC (`metric_values["auc/b_vs_a"]`, written by lungcnn.evaluate) is
    below WEAK_AUC: (b, a, auc)."""
    out = []
    for key, auc in predictor.spec.metric_values.items():
        b, sep, a = key.removeprefix("auc/").partition("_vs_")
        if not key.startswith("auc/") or not sep:
            continue
        if auc < WEAK_AUC:
            out.append((b, a, float(auc)))
    return out


def display_table(predictor: Predictor, results: Sequence[UploadResult]) -> pd.DataFrame:
    """The page's table: the download's columns (the prediction schema, `shown_only`) written for people:
    "P(<class>)" headers, percentages as on the result cards, blanks not "None"."""
    task = predictor.task
    rows = [_shown_row(task, r) for r in results]
    table = pd.DataFrame(rows, columns=schema.columns(task, shown_only=True)).fillna("")
    for c in task.class_names:
        column = schema.probability_column(c)
        table[column] = [format_percent(v) if v != "" else "" for v in table[column]]
    return table.rename(columns={schema.probability_column(c): f"P({c})" for c in task.class_names}).astype(str)


def _shown_row(task, result: UploadResult) -> dict[str, Any]:
    prediction = result.prediction if result.ok else Prediction(result.name, error=result.message or "could not be analysed")
    return schema.row(task, prediction, shown_only=True)


def results_csv(predictor: Predictor, results: Sequence[UploadResult]) -> bytes:
    """What the page shows, as UTF-8 CSV in lungcnn's prediction schema (`schema.columns(shown_only=True)`);
    cells that a spreadsheet would run as a formula are quoted."""
    task = predictor.task
    table = pd.DataFrame([_shown_row(task, r) for r in results], columns=schema.columns(task, shown_only=True))
    for column in (schema.FILE, schema.DECISION, schema.ERROR):
        table[column] = table[column].map(_no_formula)
    return table.to_csv(index=False).encode("utf-8")


def _no_formula(cell: Any) -> Any:
    # A file named "=HYPERLINK(...).png" must stay text when the CSV is opened in Excel.
    return "'" + cell if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


# -- the model card ------------------------------------------------------------------------------------
METRIC_NAMES = {
    "roc_auc": "ROC AUC", "accuracy": "Accuracy", "sensitivity": "Sensitivity (malignant cases found)",
    "specificity": "Specificity (non-malignant cases cleared)", "precision": "Precision (flagged cases truly malignant)",
    "f1": "F1", "brier": "Brier score (lower is better)", "ece": "Calibration error (ECE, lower is better)",
}


def model_card(predictor: Predictor) -> dict[str, Any]:
    """What the page shows about the model, from its spec; absent facts say "not recorded".

    Keys: intended_use (str), synthetic (bool), warning (str or None), details ({label: text}),
    metrics ({label: text}, empty when the checkpoint records no test results).
    """
    spec = predictor.spec
    note = spec.data_note
    synthetic = "synthetic" in note.lower()
    pre = spec.preprocessing
    metrics = _metric_rows(spec.metrics)
    details = {
        "Training data": note or "not recorded",
        "Classes": ", ".join(predictor.class_names),
        "Calibration": _calibration_text(spec.calibration),
        "Decision threshold": _threshold_text(predictor),
        "Series decision": _series_text(spec),
        "Slice order (series)": _ranking_text(spec),
        "Image size the model sees": f"{pre.image_size} x {pre.image_size} pixels",
        "CT window (DICOM)": f"level {pre.window.level:g} HU, width {pre.window.width:g} HU",
        "Out-of-domain check": _guard_text(spec.guard),
        "Lung check": ("on: a slice without both lungs in view (neck, abdomen, an inverted image) gets no result"
                       if pre.lung_check else "off: every slice is judged, with or without lungs in view"),
        "Network": spec.network.backbone,
        "Created": _date_text(spec.created),
        "Test results": "see below" if metrics else "not recorded",
    }
    warning = None
    if synthetic:
        warning = ("This model was trained on synthetic images (drawn phantoms), not on patients' scans: "
                   "its results mean nothing for real patients. It is for demonstration only.")
    return {"intended_use": INTENDED_USE, "synthetic": synthetic, "warning": warning, "details": details, "metrics": metrics}


def _calibration_text(calibration: Calibration) -> str:
    if calibration.method == "none":
        return "none (probabilities are the network's raw output)"
    fitted_on = calibration.details.get("fitted_on")
    fitted = f", fitted on {fitted_on}" if fitted_on else ""
    if calibration.method == "temperature":
        return f"temperature scaling (T = {calibration.temperature:.2f}){fitted}"
    return f"{calibration.method}{fitted}"


def _guard_text(guard: DomainGuard | None) -> str:
    if guard is None:
        return NO_GUARD
    return (f"images unlike the training images get no result: distance to the {guard.k}-nearest of {guard.bank_size} "
            f"training images' features above {guard.threshold:.3f} ({guard.fitted_on})")


def _series_text(spec: ModelSpec) -> str:
    """How a series (`lungcnn-predict --series-out`, the page's series mode) is decided, in words."""
    fitted = ("its own threshold, fitted on the validation split's series" if spec.series.threshold is not None
              else "the slice threshold")
    return (f"{spec.series.describe()} of the slices judged; {spec.series_target} at or above "
            f"{spec.series_threshold:.1%} ({fitted})")


def _ranking_text(spec: ModelSpec) -> str:
    """How the series view orders its slices, in words."""
    if spec.novelty is None:
        return f"by probability of {spec.series_target}, highest first"
    return ("most unlike normal chest CT first: distance of a slice's features to the nearest of the "
            f"{spec.novelty.fitted_on}; the decision still comes from the slices' probabilities")


def _threshold_text(predictor: Predictor) -> str:
    spec, rule = predictor.spec, predictor.spec.decision
    if not spec.task.thresholded:
        text = ("the most probable class is reported" if not rule.weighted else
                "each class's probability is weighed against how common that class was in training, so that "
                "every class is found equally often (balanced decisions); a rarer class can be reported "
                "although a common one is more probable")
        if rule.priority is None:
            return text
        target = spec.calibration.details.get("target_sensitivity")
        found = f", chosen to find {100 * float(target):.0f}% of {rule.priority} validation cases" if target else ""
        return (f"cancer first: {rule.priority} is reported whenever its probability is at least "
                f"{format_percent(rule.threshold)}{found}; otherwise {text}")
    text = f"{format_percent(spec.decision.threshold)}: at or above it an image is reported as {predictor.class_names[-1]}"
    target = spec.calibration.details.get("target_sensitivity")
    if target:
        text += f" (chosen to find {100 * float(target):.0f}% of malignant validation cases)"
    return text


def _date_text(value: Any) -> str:
    """ISO timestamp -> "2026-11-25 12:10 UTC"; anything else as it was recorded."""
    if not value:
        return "not recorded"
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if when.utcoffset() is not None:
        return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M")


def _metric_rows(metrics: Mapping[str, str]) -> dict[str, str]:
    """The spec's test figures ({"roc_auc": "0.972 (95% CI ...)", ...}, text by construction) as display rows."""
    return {METRIC_NAMES.get(key, key): value for key, value in metrics.items()}


# -- which checkpoint ------------------------------------------------------------------------------------
def choose_checkpoint(argv: Sequence[str], environ: Mapping[str, str] = os.environ, root: Path = Path(".")) -> Path:
    """`--ckpt PATH` from the script's arguments, else $LUNGCNN_CKPT, else a committed reference model (trained
    on real CT, `REFERENCE_CHECKPOINTS` in order), else the demo checkpoint (calibrated first)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--ckpt" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--ckpt="):
            return Path(arg.split("=", 1)[1])
    if environ.get(ENV_CHECKPOINT):
        return Path(environ[ENV_CHECKPOINT])
    for candidate in (*REFERENCE_CHECKPOINTS, *DEMO_CHECKPOINTS):
        if (root / candidate).is_file():
            return root / candidate
    return root / DEMO_CHECKPOINTS[0]
