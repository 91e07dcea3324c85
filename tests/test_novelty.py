"""The normal bank that ranks a series' slices (`spec.Novelty`): fitted by calibrate from the training split's normal
slices, stored with weights_only, scored alike by PyTorch and ONNX, written to the prediction table and used by the
series table; a model trained without normal slices has none and ranks by probability."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from lungcnn.calibration.fit import calibrate
from lungcnn.calibration.novelty import normal_rows
from lungcnn.data.labelled import labelled_images
from lungcnn.inference.batch import predict
from lungcnn.inference.onnx_export import export_onnx
from lungcnn.inference.predictor import Predictor
from lungcnn.models.checkpoint import load_checkpoint
from tests.conftest import make_cfg, tiny_overrides


@pytest.fixture(scope="module")
def with_normals(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run whose training split holds normal slices (`normal_as=negative`), calibrated: (checkpoint, data)."""
    from lungcnn.data.synthetic import make_synthetic_dataset
    from lungcnn.training.train import train

    root = make_synthetic_dataset(tmp_path_factory.mktemp("normals") / "data", slices_per_patient=3, image_size=64,
                                  n_patients={"benign": 3, "malignant": 5, "normal": 4}, seed=1)
    run = tmp_path_factory.mktemp("run")
    result = train(make_cfg(run, [*tiny_overrides(root), "data.normal_as=negative", "trainer.max_epochs=1",
                                  "callbacks.finetune.stage1_epochs=1"]))
    out = run / "cal.ckpt"
    calibrate(result["best_checkpoint"], out, novelty=True)
    return out, root


def test_calibrate_fits_the_bank_from_the_normal_training_slices(with_normals):
    ckpt, _ = with_normals
    spec, state = load_checkpoint(ckpt)  # weights_only inside
    train = labelled_images(spec.data, spec.preprocessing, spec.class_names, "train")
    normals = int(normal_rows(train.frame["file"][train.readable], spec.data).sum())
    assert spec.novelty is not None and spec.novelty.bank_size == normals > 0
    assert tuple(state["novelty.bank"].shape) == (normals, spec.novelty.feature_dim)
    assert state["novelty.mean"].shape == state["novelty.scale"].shape == (spec.novelty.feature_dim,)
    assert "normal slices of the training split" in spec.novelty.fitted_on


def test_novelty_is_scored_alike_by_torch_and_onnx_and_reaches_the_tables(with_normals, tmp_path):
    ckpt, root = with_normals
    files = sorted(root.rglob("*.png"))[:6]
    torch_p = Predictor.from_checkpoint(ckpt).predict_files(files)
    novelty = np.array([p.novelty for p in torch_p])
    assert np.isfinite(novelty).all() and (novelty >= 0).all() and novelty.std() > 0
    onnx_file, _ = export_onnx(ckpt, tmp_path / "m.onnx")
    onnx_p = Predictor.from_checkpoint(onnx_file, "onnx").predict_files(files)
    np.testing.assert_allclose([p.novelty for p in onnx_p], novelty, atol=1e-4)

    slices, series = tmp_path / "slices.csv", tmp_path / "series.csv"
    predict([root / "malignant"], ckpt, slices, backend="torch", progress=False, series_out=series)  # one folder: one series
    rows = list(csv.DictReader(slices.open(encoding="utf-8")))
    scored = {Path(r["file"]).name: float(r["novelty"]) for r in rows}
    judged = [r for r in rows if r["decision"] not in ("out of domain", "no lungs in view")]
    assert judged, "every slice was left unjudged: the test cannot check the ranking"
    top = max(judged, key=lambda r: float(r["novelty"]))
    (row,) = list(csv.DictReader(series.open(encoding="utf-8")))
    assert Path(row["most_suspicious_slice"]).name == Path(top["file"]).name and len(scored) == len(rows)


def test_a_split_without_normal_slices_gets_no_bank(calibrated_ckpt, with_normals, tmp_path):
    assert load_checkpoint(calibrated_ckpt)[0].novelty is None  # the shared tiny run drops its normal folder
    first = sorted(with_normals[1].rglob("*.png"))[:1]
    assert np.isnan(Predictor.from_checkpoint(calibrated_ckpt).predict_files(first)[0].novelty)
    off = calibrate(with_normals[0], tmp_path / "off.ckpt")  # off by default
    assert off.novelty is None and not any(k.startswith("novelty.") for k in load_checkpoint(tmp_path / "off.ckpt")[1])
    assert torch.is_tensor(load_checkpoint(with_normals[0])[1]["novelty.bank"])

