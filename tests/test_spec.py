"""The model spec, the task object and the prediction schema: one owner for each rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.predictor import Prediction
from lungcnn.models.checkpoint import load_checkpoint, save_checkpoint
from lungcnn.spec import FORMAT, Calibration, DecisionRule, ModelSpec, NetworkSpec, Preprocessing
from lungcnn.task import BinaryTask, MulticlassTask, make_task

PRE = Preprocessing(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
THREE = ("normal", "benign", "malignant")


def _spec(task: str = "binary", names=("benign", "malignant"), **changes) -> ModelSpec:
    spec = ModelSpec(make_task(task, names), NetworkSpec("mobilenetv2_100", 16, 0.1), PRE, data={"note": "tiny"})
    return spec.replace(**changes)


def test_spec_round_trips_through_plain_metadata_and_weights_only_checkpoint(tmp_path) -> None:
    spec = _spec("multiclass", THREE,
                 calibration=Calibration("temperature", 0.8, (0.1, -0.2, 0.3), tta="flip", details={"fitted_on": "9 images"}),
                 decision=DecisionRule(weights=(1.0, 0.5, 0.25)), metrics={"roc_auc": "0.9"}, metric_values={"roc_auc": 0.9})
    meta = spec.to_metadata()
    assert meta["format"] == FORMAT and meta["calibration"]["logit_shift"] == [0.1, -0.2, 0.3]
    assert ModelSpec.from_metadata(meta) == spec
    save_checkpoint(tmp_path / "m.ckpt", spec, {"w": torch.zeros(2)})
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)  # plain types only
    assert raw["lungcnn"] == meta
    loaded, state = load_checkpoint(tmp_path / "m.ckpt")
    assert loaded == spec and list(state) == ["w"]


def test_format_1_metadata_is_converted() -> None:
    v1 = {"format": "lungcnn-checkpoint/1", "task": "binary", "class_names": ["benign", "malignant"],
          "backbone": "mobilenetv2_100", "head": {"hidden": 16, "dropout": 0.1},
          "preprocessing": {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "window": {"level": -600, "width": 1500},
                            "crop": "none", "pad": "square, value 0"},
          "temperature": 0.7, "threshold": 0.2, "tta": "none", "data": {"note": "n"}, "data_note": "n",
          "calibration": {"method": "temperature", "logit_shift": 0.5, "fitted_on": "5 validation images"}}
    spec = ModelSpec.from_metadata(v1)
    assert spec.calibration.temperature == 0.7 and spec.calibration.logit_shift == 0.5
    assert spec.decision.threshold == 0.2 and spec.calibration.details == {"fitted_on": "5 validation images"}
    assert spec.data_note == "n" and spec.network.hidden == 16


@pytest.mark.parametrize(("meta_change", "message"), [
    (lambda m: m.update(format="lungcnn-checkpoint/9"), "unknown lungcnn metadata format"),
    (lambda m: m.update(task="regression"), "model.task must be one of"),
    (lambda m: m["calibration"].update(temperature=-1.0), "temperature must be > 0"),
    (lambda m: m["calibration"].update(method="platt"), "calibration method must be one of"),
    (lambda m: m["decision"].update(threshold=2.0), "threshold must be in [0, 1]"),
    (lambda m: m["decision"].update(weights=[1.0, 1.0]), "do not fit 2 classes"),
    (lambda m: m["decision"].update(priority="malignant"), "decision priority 'malignant' is not one of"),
    (lambda m: m["preprocessing"].update(image_size="big"), "data.image_size must be an integer"),
    (lambda m: m["preprocessing"].update(crop="heart"), "data.crop must be one of"),
    (lambda m: m["preprocessing"]["window"].update(width=0), "data.window.width must be"),
    (lambda m: m.pop("network"), "incomplete or malformed"),
    (lambda m: m["network"].update(layers=3), "incomplete or malformed"),
    (lambda m: m.update(class_names=["a", "b", "c"]), "needs 2 classes"),
])
def test_bad_metadata_is_refused_in_one_line(meta_change, message) -> None:
    meta = _spec().to_metadata()
    meta_change(meta)
    with pytest.raises(LungCNNInputError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        ModelSpec.from_metadata(meta, source="x.ckpt")
    assert str(info.value).startswith("x.ckpt") and "\n" not in str(info.value)


def test_task_probabilities_one_definition_for_torch_and_numpy() -> None:
    rng = np.random.default_rng(0)
    for task, z in ((BinaryTask(("b", "m")), rng.normal(size=7)), (MulticlassTask(THREE), rng.normal(size=(7, 3)))):
        shift = 0.3 if task.outputs == 1 else (0.1, 0.0, -0.4)
        from_numpy = task.probabilities(z, shift, 0.7)
        from_torch = task.probabilities(torch.from_numpy(z), torch.as_tensor(shift, dtype=torch.float64), 0.7).numpy()
        np.testing.assert_allclose(from_numpy, from_torch, rtol=1e-12)
        zs = (z + np.asarray(shift)) / 0.7
        expected = 1 / (1 + np.exp(-zs)) if task.outputs == 1 else np.exp(zs) / np.exp(zs).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(from_numpy, expected, rtol=1e-12)
        per_class = task.class_probabilities(from_numpy)
        assert per_class.shape == (7, task.num_classes)
        np.testing.assert_allclose(per_class.sum(axis=1), 1.0)


def test_decision_rules() -> None:
    binary = _spec(decision=DecisionRule(threshold=0.3))
    assert binary.decide(np.array([0.29, 0.3, 0.9])).tolist() == [0, 1, 1]
    k = _spec("multiclass", THREE, decision=DecisionRule(weights=(1.0, 4.0, 1.0)))
    assert k.decide(np.array([[0.5, 0.2, 0.3]])).tolist() == [1]  # 0.2 * 4 beats 0.5
    assert k.decision.weighted and not _spec("multiclass", THREE).decision.weighted


def test_schema_columns_and_rows_share_names() -> None:
    binary, three = make_task("binary", ("benign", "malignant")), make_task("multiclass", THREE)
    assert schema.columns(binary) == ["file", "decision", "in_domain", "lungs_in_view", "domain_score", "novelty",
                                      "probability_benign",
                                      "probability_malignant", "uncalibrated_probability_benign",
                                      "uncalibrated_probability_malignant", "logit", "error"]
    assert schema.columns(three, labelled=True)[:3] == ["file", "label", "decision"]
    assert [f"logit_{c}" for c in THREE] == schema.logit_columns(three)
    for task in (binary, three):
        shown = schema.columns(task, shown_only=True)
        assert set(shown) <= set(schema.columns(task))
    p = Prediction("a.png", (0.4,), {"benign": 0.4, "malignant": 0.6}, {"benign": 0.5, "malignant": 0.5}, "malignant")
    assert schema.row(binary, p, "benign") == {"file": "a.png", "label": "benign", "error": "", "decision": "malignant",
                                               "in_domain": "", "lungs_in_view": "",
                                               "probability_benign": 0.4, "probability_malignant": 0.6,
                                               "uncalibrated_probability_benign": 0.5,
                                               "uncalibrated_probability_malignant": 0.5, "logit": 0.4}
    assert schema.row(binary, Prediction("b.png", error="unreadable")) == {"file": "b.png", "error": "unreadable"}
    flagged = Prediction("c.png", (3.0,), {"benign": 0.1, "malignant": 0.9}, {"benign": 0.1, "malignant": 0.9},
                         "out of domain", domain_score=1.2, in_domain=False)
    assert schema.row(binary, flagged)["domain_score"] == 1.2 and schema.row(binary, flagged)["probability_malignant"] == 0.9
    assert schema.row(binary, flagged, shown_only=True) == {"file": "c.png", "error": "", "decision": "out of domain",
                                                            "in_domain": "false", "lungs_in_view": ""}  # no number
    no_lungs = Prediction("d.png", (3.0,), {"benign": 0.1, "malignant": 0.9}, {"benign": 0.1, "malignant": 0.9},
                          "no lungs in view", lungs_in_view=False)
    assert schema.row(binary, no_lungs, shown_only=True) == {"file": "d.png", "error": "", "decision": "no lungs in view",
                                                             "in_domain": "", "lungs_in_view": "false"}


def test_schema_table_reads_back_what_was_written(tmp_path) -> None:
    task = make_task("binary", ("benign", "malignant"))
    p = Prediction("a.png", (0.4,), {"benign": 0.25, "malignant": 0.75}, {"benign": 0.5, "malignant": 0.5}, "malignant")
    counts = schema.write_csv(tmp_path / "p.csv", task, [p, Prediction("b.png", error="bad")], ["malignant", "benign"])
    assert counts == {"classified": 1, "unreadable": 1}
    table = schema.Table.read(tmp_path / "p.csv")
    assert table.class_names == ["benign", "malignant"] and table.readable.tolist() == [True, False]
    readable = schema.Table(table.frame[table.readable])
    np.testing.assert_allclose(readable.probabilities(), [[0.25, 0.75]])
    assert readable.label_indices().tolist() == [1]
    with pytest.raises(LungCNNInputError, match="not a lungcnn prediction table"):
        schema.Table(table.frame.drop(columns=["label"]))


def test_spec_parts_check_themselves() -> None:
    with pytest.raises(LungCNNInputError, match="data.mean must be null or three numbers"):
        dataclasses.replace(PRE, mean=(0.5,))
    with pytest.raises(LungCNNInputError, match="isotonic calibration needs breakpoints"):
        Calibration("isotonic", isotonic_x=(0.0, 0.0), isotonic_y=(0.0, 1.0))
    with pytest.raises(LungCNNInputError, match="isotonic calibration is for one-output"):
        _spec("multiclass", THREE, calibration=Calibration("isotonic", isotonic_x=(0.0, 1.0), isotonic_y=(0.0, 1.0)))
    with pytest.raises(LungCNNInputError, match="logit shift has 2 values for 3 classes"):
        _spec("multiclass", THREE, calibration=Calibration("temperature", logit_shift=(0.1, 0.2)))
