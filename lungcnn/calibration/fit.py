"""Calibrating a checkpoint (`lungcnn calibrate ckpt=PATH`, `lungcnn.cli.calibrate`).

Fits the calibration on the validation split's outputs (never the test split), chooses the operating
threshold for `target_sensitivity` (and, if asked, the series threshold for `series_sensitivity` on the validation
split's series), fits the domain guard (bank: training split; threshold: the validation split's new patients), and
writes a new calibrated checkpoint; the original is untouched.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lungcnn.calibration import fit_isotonic, fit_temperature, threshold_for_sensitivity
from lungcnn.calibration.guard import GuardConfig, fit_guard_on_splits, training_features
from lungcnn.calibration.novelty import fit_novelty
from lungcnn.calibration.prior import prior_shift_of
from lungcnn.data.aggregation import aggregate
from lungcnn.data.labelled import Labelled, labelled_images
from lungcnn.errors import LungCNNInputError, require_number
from lungcnn.inference.predictor import Predictor
from lungcnn.metrics.classification import binary_metrics
from lungcnn.models.checkpoint import build_network, load_checkpoint, save_checkpoint
from lungcnn.models.guard import split_state
from lungcnn.spec import TTA_MODES, Calibration, DecisionRule, ModelSpec, SeriesRule

log = logging.getLogger(__name__)
METHODS = ("temperature", "isotonic")
DECISIONS = ("cancer_first", "balanced", "argmax")
TTA_CHOICES = (*TTA_MODES, "auto")  # auto resolves to a TTA mode from the checkpoint's task


def calibrate(ckpt: str | Path, out: str | Path | None = None, method: str = "temperature",
              target_sensitivity: float = 0.98, data_root: str | None = None, overwrite: bool = False,
              prior_correction: bool = True, decision: str = "cancer_first", tta: str = "auto",
              guard: GuardConfig | Mapping[str, Any] | None = None, feature_cache: str | Path | None = None,
              series_sensitivity: float | None = None, novelty: bool = False) -> ModelSpec:
    """Fit calibration + decision rule on validation outputs; write `out`; return the new spec.

    One output (binary): the operating threshold is the strictest that still reaches `target_sensitivity`.
    K classes: `decision` "cancer_first" (default) reports the last class (malignant) whenever P(malignant)
    reaches the threshold chosen the same way (malignant vs the rest), and otherwise decides among the other
    classes by the balanced rule, so no rule trades missed cancers for balanced accuracy; "balanced" decides
    argmax P(k) / prior(k) (maximises expected balanced accuracy; without it a rare class such as benign is
    almost never chosen once the prior shift has made the probabilities honest); "argmax" the most probable
    class (maximises accuracy).
    `tta` ("none" | "flip") is recorded in the checkpoint and used by every consumer of it; "auto" is
    flip for K-class checkpoints (it raised balanced accuracy in cross-validation) and none for binary
    ones (no measured gain there, and it halves prediction throughput).
    `guard` (`GuardConfig` or its fields, e.g. `lungcnn cv run --calibrate 'guard={unseen: source}'`; default:
    fitted) replaces any domain guard the input checkpoint had.
    `feature_cache`: a feature cache folder (`lungcnn.features.cache`, training's `feature_cache.dir`): the pooled
    backbone features of a frozen-backbone checkpoint's images are read from it, not computed again.
    `series_sensitivity` (binary only): also fit the series threshold (`SeriesRule.threshold`), the strictest on the
    series score that finds this share of the validation split's malignant series; None keeps the slice threshold
    for series, which is stricter than it looks: a series' score is its most suspicious slices'.
    `novelty`: fit the normal bank that ranks a series' slices (`calibration.novelty`, off by default: docs/lesion.md)
    from the training split's normal slices; a split without any gets none (slices ranked by probability).
    """
    guard = guard if isinstance(guard, GuardConfig) else GuardConfig(**(guard or {}))
    ckpt = Path(ckpt)
    out = Path(out) if out else ckpt.with_name(ckpt.name.removesuffix(".ckpt") + ".calibrated.ckpt")
    if method not in METHODS:
        raise LungCNNInputError(f"calibration.method must be one of {METHODS}, got {method!r}")
    if decision not in DECISIONS:
        raise LungCNNInputError(f"calibration.decision must be one of {DECISIONS}, got {decision!r}")
    if tta not in TTA_CHOICES:
        raise LungCNNInputError(f"calibration.tta must be one of {TTA_CHOICES}, got {tta!r}")
    series_sensitivity = require_number("calibration.series_sensitivity", series_sensitivity, 0, 1, low_open=True,
                                        high_open=False, optional=True)
    if out.resolve() == ckpt.resolve() or (out.exists() and not overwrite):
        raise LungCNNInputError(f"{out} exists; pass overwrite=true or another out=PATH (the input checkpoint is never replaced)")
    spec, state = load_checkpoint(ckpt)
    state = split_state(state)[0]
    one_output = spec.task.outputs == 1
    if not one_output and series_sensitivity is not None:
        raise LungCNNInputError("calibration.series_sensitivity is for the binary task (one output)")
    if not one_output and method == "isotonic":
        raise LungCNNInputError("isotonic calibration is for the binary task; use calibration.method=temperature")
    tta = ("none" if one_output else "flip") if tta == "auto" else tta
    uncalibrated = spec.replace(calibration=Calibration(tta=tta), decision=DecisionRule(), guard=None, novelty=None)
    predictor = Predictor(uncalibrated, build_network(spec, state))
    val = labelled_images(spec.data, spec.preprocessing, spec.class_names, "val", data_root)
    labels = val.labels
    logits = predictor.logits(val.images, features=predictor.cached_features(feature_cache, val)).astype(np.float64)
    details: dict[str, Any] = {"fitted_on": f"{len(labels)} validation images", "data_root": data_root}
    if method == "temperature":
        shift = prior_shift_of(spec.data) if prior_correction else 0.0
        fit = fit_temperature(logits + np.asarray(shift), labels)
        details.update(nll_before=fit.nll_before, nll_after=fit.nll_after, message=fit.message)
        calibration = Calibration("temperature", fit.temperature, shift, tta=tta, details=details)
    else:
        params = fit_isotonic(uncalibrated.probabilities(logits), labels)
        details.update(message=params.get("message"))
        calibration = Calibration("isotonic", isotonic_x=params["x"], isotonic_y=params["y"], tta=tta, details=details)
    calibrated = uncalibrated.replace(calibration=calibration)
    probs = calibrated.probabilities(logits)
    if one_output:
        rule = _operating_threshold(probs, labels, target_sensitivity, details)
    else:
        # p(k) / prior(k) with the prior the shift put in: weights exp(-shift) (all 1 without a shift).
        shift = np.broadcast_to(np.asarray(calibration.graph_shift, np.float64), (spec.task.num_classes,))
        weights = np.ones_like(shift) if decision == "argmax" else np.exp(-shift)
        rule = DecisionRule(weights=tuple(weights / weights.max()))
        if decision == "cancer_first":
            cancer = spec.task.num_classes - 1
            first = _operating_threshold(probs[:, cancer], (labels == cancer).astype(np.int64), target_sensitivity, details)
            rule = dataclasses.replace(rule, threshold=first.threshold, priority=spec.class_names[cancer])
        details["decision"] = decision
    if series_sensitivity is not None:
        lungs = predictor.lungs(val.images)
        calibrated = calibrated.replace(series=_series_threshold(calibrated.series, val, probs, lungs, series_sensitivity,
                                                                 details))
    calibrated = calibrated.replace(calibration=dataclasses.replace(calibration, details=details), decision=rule)
    train = training_features(predictor, feature_cache) if guard.enabled or novelty else None
    if guard.enabled:
        domain, tensors = fit_guard_on_splits(predictor, *train, val, guard, "validation images (unseen patients)"
                                              if data_root is None else f"images of {data_root}", feature_cache)
        calibrated, state = calibrated.replace(guard=domain), {**state, **tensors}
    bank = fit_novelty(predictor, *train) if novelty else None
    if bank is not None:
        calibrated, state = calibrated.replace(novelty=bank[0]), {**state, **bank[1]}
    if details.get("message"):
        log.warning("%s", details["message"])
    save_checkpoint(out, calibrated, state)
    print(_summary(calibrated, len(labels), decision, target_sensitivity) + f"\nwrote {out}", flush=True)
    return calibrated


def _operating_threshold(probs: np.ndarray, labels: np.ndarray, target: float, details: dict[str, Any]) -> DecisionRule:
    """The strictest threshold on P(positive) that still reaches the target sensitivity on validation (0.5
    without positives); `labels` 1 = positive (malignant)."""
    threshold = 0.5
    if labels.sum() > 0:
        threshold = threshold_for_sensitivity(probs, labels, target)
    else:
        details["message"] = "no malignant image in the validation split: threshold kept at 0.5"
    details.update(target_sensitivity=target,
                   val_at_threshold={k: v for k, v in binary_metrics(probs, labels, threshold).items() if k != "confusion"})
    return DecisionRule(threshold=float(threshold))


def _series_threshold(rule: SeriesRule, val: Labelled, probs: np.ndarray, lungs: np.ndarray | None, target: float,
                      details: dict[str, Any]) -> SeriesRule:
    """`rule` with the strictest threshold on its series score that finds `target` of the validation split's malignant
    series (a series is malignant if a slice is). Scores as the product makes them (`inference.series.summarise`):
    the rule's aggregate of the calibrated P(malignant) of the readable slices, less those without lungs in view
    (`lungs`: the lung check's verdicts, None when it is off); the guard's threshold admits the validation split by
    construction."""
    frame = val.frame[val.readable].assign(p=probs, y=val.labels)
    if lungs is not None:
        frame = frame[lungs]
    series = frame.groupby("group").agg(y=("y", "max"), score=("p", lambda v: aggregate(rule.method, v.to_numpy(), rule.k)))
    y, score = series["y"].to_numpy(np.int64), series["score"].to_numpy(np.float64)
    if y.sum() == 0:
        details["series"] = {"message": "no malignant series in the validation split: series threshold = slice threshold"}
        return rule
    threshold = float(threshold_for_sensitivity(score, y, target))
    at = binary_metrics(score, y, threshold)["confusion"]
    details["series"] = {"target_sensitivity": target, "threshold": threshold, "rule": rule.describe(),
                         "series": len(series), "malignant_series": int(y.sum()),
                         "val_found": f"{at['tp']}/{at['tp'] + at['fn']}", "val_cleared": f"{at['tn']}/{at['tn'] + at['fp']}"}
    return dataclasses.replace(rule, threshold=threshold)


def _summary(spec: ModelSpec, n: int, decision: str, target: float) -> str:
    c, rule = spec.calibration, spec.decision
    shift_text = f"prior shift {np.round(c.graph_shift, 3).tolist()}, " if np.any(np.asarray(c.graph_shift) != 0) else ""
    operating = (f", decision {decision} (class weights {np.round(rule.weights, 3).tolist()})" if rule.weights else "")
    if rule.weights is None or rule.priority:
        operating += f", threshold = {rule.threshold:.4f} (target sensitivity {target})"
    operating += f", test-time augmentation {c.tta}" if c.tta != "none" else ""
    if spec.series.threshold is not None:
        operating += f"; series ({spec.series.describe()}) threshold {spec.series.threshold:.4f}"
    guarded = (f"\ndomain guard: kNN (k={spec.guard.k}) distance threshold {spec.guard.threshold:.4f} "
               f"({spec.guard.details['validation_flagged']:.1%} of validation images flagged)" if spec.guard else "")
    ranked = f"\nseries slices ranked by novelty: {spec.novelty.fitted_on}" if spec.novelty else ""
    return f"calibrated ({c.method}) on {n} validation images: {shift_text}T = {c.temperature:.3f}{operating}{guarded}{ranked}"
