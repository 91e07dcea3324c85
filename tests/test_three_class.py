"""Three-class mode is configuration: the same code trains, calibrates, evaluates and predicts K classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungcnn.calibrate import calibrate
from lungcnn.evaluate import evaluate
from lungcnn.evaluation.multiclass_report import pairwise_auc
from lungcnn.inference.predictor import Predictor
from lungcnn.train import train

from .conftest import make_cfg, tiny_overrides


@pytest.fixture(scope="module")
def three_class_root(tmp_path_factory):
    from lungcnn.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("three") / "data", slices_per_patient=3, image_size=64,
                                  n_patients={"normal": 5, "benign": 5, "malignant": 5})


def test_three_class_train_calibrate_evaluate_predict(three_class_root, tmp_path):
    cfg = make_cfg(tmp_path / "run", ["experiment=iqothnccd_3class", *tiny_overrides(three_class_root)])
    result = train(cfg)
    assert {"balanced_accuracy", "f1", "roc_auc"} <= set(result["test"])
    calibrated = tmp_path / "cal.ckpt"
    meta = calibrate(result["best_checkpoint"], calibrated)
    assert meta["task"] == "multiclass" and meta["temperature"] > 0
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
    assert set(prediction.class_probabilities) == {"normal", "benign", "malignant"}
    assert sum(prediction.class_probabilities.values()) == pytest.approx(1.0)
    assert prediction.decision == max(prediction.class_probabilities, key=prediction.class_probabilities.get)


def test_pairwise_auc_scores_one_class_against_another():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 0, 2])
    assert pairwise_auc(probs, labels, 0, 1) == 1.0
    assert pairwise_auc(probs[[0, 2]], labels[[0, 2]], 0, 1) != pairwise_auc(probs[[0, 2]], labels[[0, 2]], 0, 1)  # NaN
