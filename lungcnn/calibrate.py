"""Calibrate: `python -m lungcnn.calibrate ckpt=PATH [calibration.method=temperature|isotonic]`.

Fits the calibration on the validation split's outputs (never the test split), chooses the operating
threshold for `target_sensitivity`, and writes a new calibrated checkpoint; the original is untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from lungcnn.calibration import fit_isotonic, fit_temperature, threshold_for_sensitivity
from lungcnn.calibration.prior import prior_shift
from lungcnn.checkpoint import build_network, load_checkpoint, save_checkpoint
from lungcnn.cli import friendly_errors
from lungcnn.data.catalog import labelled_files
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.metrics import binary_metrics
from lungcnn.inference.predictor import TTA_MODES, Predictor

log = logging.getLogger(__name__)
METHODS = ("temperature", "isotonic")
DECISIONS = ("balanced", "argmax")
TTA_CHOICES = (*TTA_MODES, "auto")  # auto resolves to a TTA mode from the checkpoint's task


def calibrate(ckpt: str | Path, out: str | Path | None = None, method: str = "temperature",
              target_sensitivity: float = 0.98, data_root: str | None = None, overwrite: bool = False,
              prior_correction: bool = True, decision: str = "balanced", tta: str = "auto") -> dict[str, Any]:
    """Fit calibration + threshold on validation outputs; write `out`; return the new metadata.

    K classes: `decision` "balanced" decides argmax P(k) / prior(k) (the rule that maximises expected
    balanced accuracy; without it a rare class such as benign is almost never chosen once the prior
    shift has made the probabilities honest), "argmax" the most probable class (maximises accuracy).
    `tta` ("none" | "flip") is recorded in the checkpoint and used by every consumer of it; "auto" is
    flip for K-class checkpoints (it raised balanced accuracy in cross-validation) and none for binary
    ones (no measured gain there, and it halves prediction throughput).
    """
    ckpt = Path(ckpt)
    out = Path(out) if out else ckpt.with_name(ckpt.name.removesuffix(".ckpt") + ".calibrated.ckpt")
    if method not in METHODS:
        raise LungCNNInputError(f"calibration.method must be one of {METHODS}, got {method!r}")
    if not 0 < target_sensitivity <= 1:
        raise LungCNNInputError(f"calibration.target_sensitivity must be in (0, 1], got {target_sensitivity}")
    if decision not in DECISIONS:
        raise LungCNNInputError(f"calibration.decision must be one of {DECISIONS}, got {decision!r}")
    if tta not in TTA_CHOICES:
        raise LungCNNInputError(f"calibration.tta must be one of {TTA_CHOICES}, got {tta!r}")
    if out.resolve() == ckpt.resolve() or (out.exists() and not overwrite):
        raise LungCNNInputError(f"{out} exists; pass overwrite=true or another out=PATH (the input checkpoint is never replaced)")
    meta, state = load_checkpoint(ckpt)
    if meta["task"] != "binary" and method == "isotonic":
        raise LungCNNInputError("isotonic calibration is for the binary task; use calibration.method=temperature")
    if tta == "auto":
        tta = "none" if meta["task"] == "binary" else "flip"
    meta = {**meta, "tta": tta}
    meta.pop("decision_weights", None)
    predictor = Predictor({**meta, "calibration": {"method": "none"}, "temperature": 1.0}, build_network(meta, state))
    frame = labelled_files(meta["data"], meta["class_names"], "val", data_root)
    results = predictor.predict_files(list(frame["path"]))
    ok = [r.ok for r in results]
    labels = frame["label"].to_numpy()[ok]
    logits = np.array([r.logit for r in results if r.ok], dtype=np.float64)
    info: dict[str, Any] = {"method": method, "fitted_on": f"{len(labels)} validation images", "data_root": data_root}
    if method == "temperature":
        shift = _prior_shift(meta) if prior_correction else 0.0
        fit = fit_temperature(logits + np.asarray(shift), labels)
        temperature = fit.temperature
        info.update(logit_shift=shift, nll_before=fit.nll_before, nll_after=fit.nll_after, message=fit.message)
        calibrated_meta = {**meta, "temperature": temperature, "calibration": info}
    else:
        params = fit_isotonic(predictor.probabilities(logits, calibrated=False), labels)
        info.update(isotonic={"x": params["x"], "y": params["y"]}, message=params.get("message"))
        calibrated_meta = {**meta, "temperature": 1.0, "calibration": info}
    calibrated = Predictor(calibrated_meta, predictor.net)
    threshold = 0.5
    if meta["task"] == "binary":
        probs = calibrated.probabilities(logits)
        if labels.sum() > 0:
            threshold = threshold_for_sensitivity(probs, labels, target_sensitivity)
        else:
            info["message"] = "no malignant image in the validation split: threshold kept at 0.5"
        info.update(target_sensitivity=target_sensitivity,
                    val_at_threshold={k: v for k, v in binary_metrics(probs, labels, threshold).items() if k != "confusion"})
    calibrated_meta["threshold"] = float(threshold)
    if meta["task"] != "binary":
        # p(k) / prior(k) with the prior the shift put in: weights exp(-shift) (all 1 without a shift).
        shift = np.broadcast_to(np.asarray(info.get("logit_shift", 0.0), np.float64), (len(meta["class_names"]),))
        weights = np.exp(-shift) if decision == "balanced" else np.ones_like(shift)
        calibrated_meta["decision_weights"] = [float(w) for w in weights / weights.max()]
        info["decision"] = decision
    if info.get("message"):
        log.warning("%s", info["message"])
    save_checkpoint(out, calibrated_meta, state)
    shift = info.get("logit_shift", 0.0)
    shift_text = f"prior shift {np.round(shift, 3).tolist()}, " if np.any(np.asarray(shift) != 0) else ""
    operating = (f", threshold = {threshold:.4f} (target sensitivity {target_sensitivity})" if meta["task"] == "binary"
                 else f", decision {decision} (class weights {np.round(calibrated_meta['decision_weights'], 3).tolist()})")
    operating += f", test-time augmentation {tta}" if tta != "none" else ""
    print(f"calibrated ({method}) on {len(labels)} validation images: {shift_text}T = {calibrated_meta['temperature']:.3f}"
          f"{operating}\nwrote {out}", flush=True)
    return calibrated_meta


def _prior_shift(meta: dict[str, Any]) -> float | list[float]:
    data = meta.get("data", {})
    counts, imbalance = data.get("train_class_counts"), data.get("imbalance")
    if not counts or imbalance is None:
        log.warning("the checkpoint does not record its training class counts: no prior correction")
        return 0.0
    return prior_shift(counts, imbalance)


@hydra.main(version_base="1.3", config_path="../conf", config_name="calibrate")
@friendly_errors
def main(cfg: DictConfig) -> None:
    calibrate(cfg.ckpt, cfg.out, cfg.calibration.method, cfg.calibration.target_sensitivity, cfg.data_root, cfg.overwrite,
              cfg.calibration.prior_correction, cfg.calibration.decision, cfg.calibration.tta)


if __name__ == "__main__":
    main()
