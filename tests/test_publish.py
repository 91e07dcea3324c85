"""`lungcnn.publish` (the shipped model file) and the committed reference model in models/."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lungcnn.errors import LungCNNInputError
from lungcnn.inference.predictor import Predictor
from lungcnn.webapp.publish import MAX_BYTES, publish, run_seed
from lungcnn.webapp.uploads import REFERENCE_CHECKPOINTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# The data each committed model was trained and tested on.
NEEDS = {"lungcnn-chestct-binary.ckpt": ("iqothnccd-dev", "chestct-kaggle-dev", "luna16-normal-dev"),
         "lungcnn-iqothnccd-binary.ckpt": ("iqothnccd-dev",)}


def test_publish_writes_a_float16_model_that_answers_like_its_source_with_split_and_card(calibrated_ckpt, tiny_root, tmp_path):
    out = tmp_path / "models" / "tiny.ckpt"
    report = publish(calibrated_ckpt, out, str(tiny_root), recipe="the tiny test run", n_resamples=50,
                     report_dir=tmp_path / "report")
    raw = torch.load(str(out), map_location="cpu", weights_only=True)
    floats = [v for v in raw["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert out.stat().st_size < MAX_BYTES and out.with_suffix(".split.csv").is_file()
    source, shipped = Predictor.from_checkpoint(calibrated_ckpt), Predictor.from_checkpoint(out)
    files = sorted(str(p) for p in tiny_root.rglob("*.png"))[:6]
    a = np.array([p.probabilities["malignant"] for p in source.classify(files, files)[0]], dtype=float)
    b = np.array([p.probabilities["malignant"] for p in shipped.classify(files, files)[0]], dtype=float)
    np.testing.assert_allclose(a, b, atol=0.02)  # float16 weights, float32 arithmetic
    spec = shipped.spec
    assert spec.data["split_file"] == str(out.with_suffix(".split.csv")) and spec.data["root"] == str(tiny_root)
    at = report["results"]["calibrated"]["threshold_calibrated"]["metrics"]
    assert spec.metric_values["sensitivity"] == pytest.approx(at["sensitivity"])
    card = out.with_suffix(".md").read_text()
    for part in ("## Intended use", "**Not for**", "| test |", "the tiny test run", "Sensitivity (malignant cases found)",
                 "normal slices dropped", "seed not recorded"):  # this calibrated file lies outside its run folder
        assert part in card
    assert spec.metrics["sensitivity"] in card


def test_the_card_names_the_seed_of_the_run_the_checkpoint_came_from(trained_ckpt, tmp_path):
    assert run_seed(trained_ckpt.parent.parent) == 0  # conf/train.yaml's seed, recorded in RUN/metrics.json
    assert run_seed(tmp_path) is None


def test_publish_refuses_an_uncalibrated_checkpoint(trained_ckpt, tmp_path):
    with pytest.raises(LungCNNInputError, match="not calibrated"):
        publish(trained_ckpt, tmp_path / "x.ckpt", "data")


@pytest.mark.parametrize("reference", REFERENCE_CHECKPOINTS, ids=lambda p: p.name)
def test_the_committed_reference_models_reproduce_their_recorded_test_figures(reference, tmp_path, monkeypatch):
    """The files `make app` serves: load, and re-evaluated on their recorded split give the figures their cards show."""
    from lungcnn.evaluation.evaluate import evaluate

    if not all((SHARED / d).is_dir() for d in NEEDS[reference.name]):
        pytest.skip(f"needs the dev data {NEEDS[reference.name]} in ../shared")
    monkeypatch.chdir(ROOT)  # its data paths are relative to the repository's root, where `make` runs
    ckpt = ROOT / reference
    assert ckpt.stat().st_size < MAX_BYTES
    recorded = Predictor.from_checkpoint(ckpt).spec
    assert recorded.guard is not None and recorded.is_calibrated and recorded.metric_values
    copy = tmp_path / ckpt.name  # evaluating records figures into the file: do it on a copy
    shutil.copyfile(ckpt, copy)
    report = evaluate(copy, out_dir=str(tmp_path / "report"), n_resamples=20)
    again = report["results"]["calibrated"]["threshold_calibrated"]["metrics"]
    for key, value in recorded.metric_values.items():
        assert again[key] == pytest.approx(value, abs=1e-3), key
