"""Three-class mode is configuration: the same code trains, calibrates, evaluates and predicts K classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungcnn.calibration.fit import calibrate
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.evaluate import evaluate
from lungcnn.evaluation.multiclass_report import pairwise_auc
from lungcnn.inference.predictor import Predictor
from lungcnn.task import make_task
from lungcnn.training.train import train

from .conftest import make_cfg, tiny_overrides


@pytest.fixture(scope="module")
def three_class_root(tmp_path_factory):
    from lungcnn.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("three") / "data", slices_per_patient=3, image_size=64,
                                  n_patients={"normal": 6, "benign": 3, "malignant": 5})


@pytest.fixture(scope="module")
def three_class_run(three_class_root, tmp_path_factory):
    """One tiny 3-class training run (imbalanced classes, like the real data) shared by this module."""
    run_dir = tmp_path_factory.mktemp("three_run")
    return train(make_cfg(run_dir, ["experiment=iqothnccd_3class", *tiny_overrides(three_class_root)]))


def test_three_class_train_calibrate_evaluate_predict(three_class_root, three_class_run, tmp_path):
    result = three_class_run
    assert {"balanced_accuracy", "f1", "roc_auc"} <= set(result["test"])
    calibrated = tmp_path / "cal.ckpt"
    spec = calibrate(result["best_checkpoint"], calibrated)
    assert spec.task.name == "multiclass" and spec.calibration.temperature > 0
    assert spec.calibration.tta == "flip"  # tta=auto: flip test-time augmentation for K classes
    report = evaluate(calibrated, out_dir=str(tmp_path / "report"), n_resamples=50)
    cells = report["results"]["calibrated"]
    assert {"balanced_accuracy", "auc/benign_vs_normal", "sensitivity/normal", "roc_auc/malignant"} <= set(cells)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["class_names"] == ["normal", "benign", "malignant"]
    for name in ("confusion.png", "reliability_benign.png", "predictions.csv", "report.md"):
        assert (tmp_path / "report" / name).is_file()
    predictor = Predictor.from_checkpoint(calibrated)
    image = next((three_class_root / "normal").glob("*.png"))
    [prediction] = predictor.predict_files([image])
    assert set(prediction.probabilities) == {"normal", "benign", "malignant"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    rule = spec.decision  # default: cancer first, then balanced among the others
    assert rule.priority == "malignant" and 0 < rule.threshold < 1 and rule.weighted
    p = np.array([prediction.probabilities[c] for c in predictor.class_names])
    others = p * np.array(rule.weights)
    others[2] = -1
    expected = "malignant" if p[2] >= rule.threshold else predictor.class_names[int(np.argmax(others))]
    assert prediction.decision == expected
    # Malignant sensitivity is the report's first figure.
    assert next(iter(cells)) == "sensitivity/malignant"


def test_balanced_decisions_divide_by_the_training_prior(three_class_run, tmp_path):
    """decision=balanced: weights = 1 / prior after the prior shift (so a rare class can be named);
    decision=argmax or no prior shift: all weights 1."""
    ckpt = three_class_run["best_checkpoint"]
    spec = calibrate(ckpt, tmp_path / "balanced.ckpt", decision="balanced")
    counts = np.array(spec.data["train_class_counts"], dtype=float)
    expected = (1 / counts) / (1 / counts).max()
    assert len(set(counts)) > 1 and len(set(np.round(expected, 6))) > 1  # imbalanced: the weights differ
    np.testing.assert_allclose(spec.decision.weights, expected, rtol=1e-6)
    assert spec.decision.weighted and spec.decision.priority is None
    argmax = calibrate(ckpt, tmp_path / "argmax.ckpt", decision="argmax").decision
    assert argmax.weights == (1.0, 1.0, 1.0) and not argmax.weighted
    raw = calibrate(ckpt, tmp_path / "raw.ckpt", decision="balanced", prior_correction=False)
    assert raw.decision.weights == (1.0, 1.0, 1.0)
    with pytest.raises(LungCNNInputError, match="calibration.decision"):
        calibrate(ckpt, tmp_path / "bad.ckpt", decision="vote")


def test_flip_tta_is_recorded_and_served_by_torch_and_onnx(three_class_root, three_class_run, tmp_path):
    """tta=flip: the checkpoint's logits are the mean of the image's and its mirror's, with either backend."""
    ckpt = three_class_run["best_checkpoint"]
    assert calibrate(ckpt, tmp_path / "tta.ckpt", tta="flip").calibration.tta == "flip"
    plain = Predictor.from_checkpoint(ckpt)
    flipped = Predictor.from_checkpoint(tmp_path / "tta.ckpt")
    images = np.stack([plain.load(p) for p in sorted((three_class_root / "benign").glob("*.png"))[:4]])
    expected = (plain.logits(images) + plain.logits(np.ascontiguousarray(images[:, :, ::-1]))) / 2
    np.testing.assert_allclose(flipped.logits(images), expected, atol=1e-5)
    assert np.abs(plain.logits(images) - expected).max() > 1e-3  # the mirror view changes the logits
    onnx = Predictor.from_checkpoint(tmp_path / "tta.ckpt", backend="onnx")
    np.testing.assert_allclose(onnx.logits(images), expected, atol=1e-4)
    with pytest.raises(LungCNNInputError, match="calibration.tta"):
        calibrate(ckpt, tmp_path / "bad.ckpt", tta="rotate")


def test_pairwise_auc_scores_one_class_against_another():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 0, 2])
    assert pairwise_auc(probs, labels, 0, 1) == 1.0
    assert pairwise_auc(probs[[0, 2]], labels[[0, 2]], 0, 1) != pairwise_auc(probs[[0, 2]], labels[[0, 2]], 0, 1)  # NaN


def test_app_explains_a_balanced_decision_and_lists_every_class(three_class_root, three_class_run, tmp_path):
    from lungcnn.inference.predictor import Prediction
    from lungcnn.webapp.uploads import UploadResult, analyse_upload, decision_explanation, model_card

    calibrate(three_class_run["best_checkpoint"], tmp_path / "cal.ckpt", decision="balanced")
    predictor = Predictor.from_checkpoint(tmp_path / "cal.ckpt")
    image = next((three_class_root / "benign").glob("*.png"))
    result = analyse_upload(predictor, image.name, image.read_bytes(), with_cam=False)
    text = decision_explanation(predictor, result)
    assert all(name in text for name in predictor.class_names) and result.prediction.decision in text
    probs = {"normal": 0.6, "benign": 0.3, "malignant": 0.1}
    rare = UploadResult("x.png", True, prediction=Prediction("x.png", decision="benign", probabilities=probs))
    assert "although normal is more probable" in decision_explanation(predictor, rare)
    assert "balanced decisions" in model_card(predictor)["details"]["Decision threshold"]
    assert "poorly" not in decision_explanation(predictor, rare)  # no test figures recorded yet
    predictor.spec = predictor.spec.replace(metric_values={"auc/benign_vs_normal": 0.57, "auc/malignant_vs_normal": 0.998})
    assert "tells benign from normal poorly (ROC-AUC 0.57" in decision_explanation(predictor, rare)
    sure = UploadResult("y.png", True, prediction=Prediction("y.png", decision="malignant",
                                                             probabilities={**probs, "malignant": 0.9}))
    assert "poorly" not in decision_explanation(predictor, sure)
    calibrate(three_class_run["best_checkpoint"], tmp_path / "first.ckpt")  # the default: cancer first
    first = Predictor.from_checkpoint(tmp_path / "first.ckpt")
    assert "cancer first: malignant is reported" in model_card(first)["details"]["Decision threshold"]
    cancer = UploadResult("z.png", True, prediction=Prediction("z.png", decision="malignant",
                                                               probabilities={"normal": 0.5, "benign": 0.1, "malignant": 0.4}))
    assert "is at or above the threshold" in decision_explanation(first, cancer)


def test_fast_dev_run_strong_augmentation_experiment(three_class_root, tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=iqothnccd_3class_strong_aug", *tiny_overrides(three_class_root),
                              "trainer.fast_dev_run=true"])
    assert len(cfg.data.augment) == 6 and cfg.model.task == "multiclass"
    train(cfg)


def test_cancer_first_never_trades_a_cancer_for_balanced_accuracy():
    """The case the balanced rule gets wrong: P(malignant) 0.50 x weight 0.21 loses to P(normal) 0.45 x 0.28,
    so 'balanced' calls a malignant slice normal; cancer first reports malignant (P >= its threshold)."""
    from lungcnn.spec import DecisionRule

    task = make_task("multiclass", ["normal", "benign", "malignant"])
    p = np.array([[0.45, 0.05, 0.50], [0.70, 0.25, 0.05], [0.30, 0.60, 0.10]])
    balanced = DecisionRule(weights=(0.28, 1.0, 0.21))
    assert [task.class_names[i] for i in task.decide(p, balanced)] == ["normal", "benign", "benign"]
    first = DecisionRule(threshold=0.3, weights=(0.28, 1.0, 0.21), priority="malignant")
    assert [task.class_names[i] for i in task.decide(p, first)] == ["malignant", "benign", "benign"]
    # Below the threshold the other classes are decided among themselves by the balanced rule.
    assert task.decide(np.array([[0.5, 0.3, 0.2]]), first).tolist() == [1]  # 0.3 x 1.0 beats 0.5 x 0.28

