"""calibrate -> evaluate on a real (tiny) trained checkpoint, and the checkpoint's safety."""

from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

from lungcnn.calibration.fit import calibrate
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation import binary_metrics
from lungcnn.evaluation.evaluate import evaluate
from lungcnn.inference import schema
from lungcnn.inference.predictor import Predictor
from lungcnn.models.checkpoint import load_checkpoint
from lungcnn.task import make_task


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibrated_checkpoint_round_trips(trained_ckpt, tmp_path, method):
    out = tmp_path / f"{method}.ckpt"
    before = trained_ckpt.read_bytes()
    spec = calibrate(trained_ckpt, out, method=method, target_sensitivity=0.9)
    assert trained_ckpt.read_bytes() == before  # the input checkpoint is untouched
    loaded, _ = load_checkpoint(out)
    assert loaded.decision == spec.decision and loaded.calibration.temperature == spec.calibration.temperature > 0
    assert loaded.calibration.method == method
    assert loaded.calibration.tta == "none"  # tta=auto: no test-time augmentation for the binary task
    # The threshold reaches the target sensitivity on the validation split it was chosen on.
    assert loaded.calibration.details["val_at_threshold"]["sensitivity"] >= 0.9
    predictor = Predictor.from_checkpoint(out)
    assert predictor.spec.is_calibrated and predictor.spec.decision.threshold == pytest.approx(spec.decision.threshold)
    if method == "temperature":
        # Balanced sampling in training: the prior shift is log(malignant / benign) of the training split.
        n_benign, n_malignant = loaded.data["train_class_counts"]
        assert loaded.calibration.logit_shift == pytest.approx(np.log(n_malignant / n_benign))
        z = np.array([-2.0, 0.0, 3.0])
        expected = 1 / (1 + np.exp(-(z + loaded.calibration.logit_shift) / loaded.calibration.temperature))
        np.testing.assert_allclose(loaded.probabilities(z), expected, rtol=1e-9)
    with pytest.raises(LungCNNInputError, match="exists"):
        calibrate(trained_ckpt, out)


def test_evaluate_writes_a_report_that_recomputes(trained_ckpt, tmp_path):
    calibrated = tmp_path / "cal.ckpt"
    calibrate(trained_ckpt, calibrated)
    report = evaluate(calibrated, out_dir=str(tmp_path / "report"), n_resamples=200)
    for name in ("report.json", "report.md", "predictions.csv", "roc.png", "reliability.png", "confusion.png",
                 "histogram.png"):
        assert (tmp_path / "report" / name).is_file(), name
    with open(tmp_path / "report" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == schema.columns(make_task("binary", ["benign", "malignant"]), labelled=True)
    labels = np.array([int(r["label"] == "malignant") for r in rows])
    probs = np.array([float(r["probability_malignant"]) for r in rows])
    assert all(r["decision"] == ("out of domain" if r["in_domain"] == "false" else "malignant"
                                 if p >= report["threshold_calibrated"] else "benign") for r, p in zip(rows, probs))
    assert report["domain_guard"]["n"] == len(rows) and report["domain_guard"]["flagged"] == sum(
        r["in_domain"] == "false" for r in rows)
    again = binary_metrics(probs, labels, report["threshold_calibrated"])
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["results"]["calibrated"]["threshold_calibrated"]["metrics"]["accuracy"] == pytest.approx(
        again["accuracy"], abs=1e-6)
    assert "paper" in saved and saved["n"] == len(rows)
    # No series threshold fitted: series are decided at the slice threshold, and the report says so.
    assert saved["series_rule"] == {"rule": "mean of the 3 highest slice probabilities", "target": "malignant",
                                    "threshold": report["threshold_calibrated"], "fitted": False}
    # Where it looks: Grad-CAM on judged images (the synthetic slices have two lung fields), a share in [0, 1].
    mass = saved["gradcam_lung_mass"]
    assert 0 < mass["images"] <= 64 and 0 <= mass["ci95"][0] <= mass["mean"] <= mass["ci95"][1] <= 1
    assert "Grad-CAM mass inside the lung fields" in (tmp_path / "report" / "report.md").read_text()
    # The calibrated checkpoint's model card now carries the test figures (weights untouched).
    from lungcnn.webapp.uploads import model_card

    card = model_card(Predictor.from_checkpoint(calibrated))
    assert card["metrics"] and any("ROC" in k for k in card["metrics"])
    auc = saved["results"]["calibrated"]["threshold_calibrated"]["metrics"]["roc_auc"]
    spec = load_checkpoint(calibrated)[0]
    assert spec.metrics["roc_auc"].startswith(f"{auc:.3f}") and spec.metric_values["roc_auc"] == pytest.approx(auc)


def test_foreign_and_malicious_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(LungCNNInputError, match="not a lungcnn checkpoint"):
        calibrate(foreign, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"lungcnn": Exploit(), "state_dict": {}}, f)
    with pytest.raises(LungCNNInputError, match="refused|not a readable"):
        load_checkpoint(evil)
    torch.save({"lungcnn": Exploit(), "state_dict": {}}, tmp_path / "evil2.ckpt")
    with pytest.raises(LungCNNInputError, match="refused"):
        Predictor.from_checkpoint(tmp_path / "evil2.ckpt")
    assert not marker.exists()


def test_folder_without_labels_is_refused(trained_ckpt, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(LungCNNInputError, match="no class folders"):
        evaluate(trained_ckpt, data_root=str(tmp_path / "flat"), out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_cam_lung_mass_is_the_heat_maps_share_inside_the_lung_fields(trained_ckpt, monkeypatch):
    """The figure from known heat maps: all mass on the lungs -> 1, none -> 0, half -> 0.5; images not judged and
    beyond the limit are left out."""
    from lungcnn.data.lungcrop import find_lung_fields
    from lungcnn.evaluation import looks
    from lungcnn.inference import gradcam as gradcam_module
    from lungcnn.inference.gradcam import CamResult

    predictor = Predictor.from_checkpoint(trained_ckpt, lung_check=True)
    y, x = np.mgrid[:64, :64] / 64
    chest = np.zeros((64, 64), np.uint8)
    chest[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 128
    for cx in (0.3, 0.7):
        chest[((x - cx) / 0.12) ** 2 + ((y - 0.5) / 0.18) ** 2 < 1] = 12
    lungs = find_lung_fields(chest).lungs
    images = np.stack([chest] * 4)
    predictions = predictor.predict_images(images, [f"s{i}" for i in range(4)])
    assert all(p.answered for p in predictions)
    maps = iter([lungs, ~lungs, lungs])  # the 3 of 4 judged images the limit picks, in order

    def fake(predictor, image, towards=None):
        heat = np.asarray(next(maps), np.float32)
        return CamResult(heat, np.zeros((64, 64, 3), np.uint8), "layer", "malignant")

    monkeypatch.setattr(gradcam_module, "gradcam", fake)
    result = looks.cam_lung_mass(predictor, images, predictions, limit=3)
    assert result["images"] == 3 and result["mean"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["lung_area"] == pytest.approx(lungs.mean())
    maps = iter([np.where(lungs, 1.0, lungs.sum() / (~lungs).sum())])
    result = looks.cam_lung_mass(predictor, images[:1], predictions[:1], limit=5)
    assert result["images"] == 1 and result["mean"] == pytest.approx(0.5)
    assert looks.cam_lung_mass(predictor, images, predictions, limit=0)["images"] == 0


def test_series_threshold_is_fitted_on_the_validation_series(trained_ckpt, tmp_path):
    """calibration.series_sensitivity=1: the strictest threshold on the series score (the rule's aggregate of the
    calibrated slice probabilities) that finds every malignant validation series; the product's series decision
    (`inference.series.summarise`) then uses it."""
    from lungcnn.data.labelled import labelled_images
    from lungcnn.inference.series import summarise

    out = tmp_path / "series.ckpt"
    spec = calibrate(trained_ckpt, out, series_sensitivity=1.0)
    loaded = load_checkpoint(out)[0]
    assert loaded.series == spec.series and loaded.series.threshold is not None
    assert loaded.calibration.details["series"]["target_sensitivity"] == 1.0
    predictor = Predictor.from_checkpoint(out)
    val = labelled_images(spec.data, spec.preprocessing, spec.class_names, "val")
    probs = predictor.spec.probabilities(predictor.logits(val.images))
    frame = val.frame[val.readable].assign(p=probs, y=val.labels)
    results = {g: summarise(loaded, g, list(part["file"]), list(part["p"])) for g, part in frame.groupby("group")}
    malignant = {g for g, part in frame.groupby("group") if part["y"].max() == 1}
    assert malignant and all(results[g].decision == "malignant" for g in malignant)
    # The strictest: no malignant series scores far above the threshold's place (it sits below the lowest one).
    lowest = min(results[g].probability for g in malignant)
    assert loaded.series.threshold <= lowest
    others = [results[g].probability for g in results if g not in malignant and results[g].probability < lowest]
    assert not others or loaded.series.threshold > max(others)
    assert spec.decision == calibrate(trained_ckpt, tmp_path / "slice.ckpt").decision  # the slice rule is unchanged
    for bad in (0, 1.5, True, "high"):
        with pytest.raises(LungCNNInputError, match="series_sensitivity"):
            calibrate(trained_ckpt, tmp_path / "bad.ckpt", series_sensitivity=bad)
