"""Cross-fitted calibration (`python -m lungcnn.cv crossfit`): each fold calibrated on the other folds'
out-of-fold outputs, pooled per repeat; and a checkpoint calibrated on every fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcnn import cv
from lungcnn.checkpoint import load_checkpoint
from lungcnn.evaluation import binary_metrics
from lungcnn.evaluation.crossfit import _apply, fit
from lungcnn.inference import schema
from lungcnn.inference.predictor import Prediction, Predictor
from lungcnn.task import make_task


def _fold(job: Path, rng: np.random.Generator, k: int, n_series: int = 6, per_series: int = 5) -> pd.DataFrame:
    """A finished fold: metrics.json, split.csv and report/predictions.csv whose network is overconfident
    and biased (logit = 4 x the true log-odds + 1.5), so calibration has something to fix."""
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"test": {"roc_auc": 0.9}}))
    rows, predictions = [], []
    for s in range(n_series):
        label = int(s % 3 != 0)
        true_logodds = rng.normal(1.2 if label else -1.2, 1.0, per_series)
        for j, t in enumerate(true_logodds):
            y = int(rng.random() < 1 / (1 + np.exp(-t)))
            name = f"{'malignant' if y else 'benign'}/f{k}s{s}i{j}.png"
            z = 4 * t + 1.5
            p = 1 / (1 + np.exp(-z))
            rows.append({"file": name, "label": y, "group": f"g{k}_{s}", "split": "test"})
            predictions.append(Prediction(name, (float(z),), {"benign": 1 - p, "malignant": p},
                                          {"benign": 1 - p, "malignant": p}, "malignant" if p >= 0.5 else "benign",
                                          domain_score=0.1, in_domain=True))
    frame = pd.DataFrame(rows)
    frame.to_csv(job / "split.csv", index=False)
    task = make_task("binary", ["benign", "malignant"])
    schema.write_csv(job / "report" / "predictions.csv", task, predictions,
                     ["malignant" if y else "benign" for y in frame["label"]])
    return frame


def test_crossfit_fits_each_fold_on_the_others_only_and_calibrates_better_than_the_raw_outputs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    out = tmp_path / "rcv"
    for s in (0, 1):
        for k in range(3):
            _fold(out / f"seed{s}" / f"fold{k}", rng, k)
    assert cv.main(["crossfit", str(out), "--method", "platt", "--n-resamples", "50"]) == 0
    assert "per repeat" in capsys.readouterr().out
    summary = json.loads((out / "repeated_cv_crossfit_platt.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["folds"] == 3
    for s in (0, 1):  # recompute the pooled figure: fold k fitted on folds != k
        tables = [schema.Table.read(out / f"seed{s}" / f"fold{k}" / "report" / "predictions.csv") for k in range(3)]
        p = [t.probabilities(calibrated=False)[:, 1] for t in tables]
        y = [t.label_indices() for t in tables]
        q = []
        for k in range(3):
            calibration, rule = fit("platt", np.concatenate(p[:k] + p[k + 1:]), np.concatenate(y[:k] + y[k + 1:]), 0.98, "x")
            q.append(_apply(calibration, p[k]))
            assert summary["per_repeat"][str(s)]["thresholds"][k] == pytest.approx(rule.threshold)
        pooled = summary["per_repeat"][str(s)]["calibrated"]["metrics"]
        assert pooled["ece"] == pytest.approx(binary_metrics(np.concatenate(q), np.concatenate(y))["ece"])
        assert pooled["ece"] < binary_metrics(np.concatenate(p), np.concatenate(y))["ece"]  # it helped
        assert summary["per_repeat"][str(s)]["operating_point"]["metrics"]["sensitivity"] > 0.8
    assert cv.main(["crossfit", str(out), "--method", "isotonic", "--n-resamples", "20"]) == 0
    assert (out / "repeated_cv_crossfit_isotonic.json").is_file()


def test_crossfit_apply_writes_a_checkpoint_calibrated_on_every_fold(tmp_path, trained_ckpt, tiny_root):
    rng = np.random.default_rng(1)
    out = tmp_path / "rcv"
    for k in range(3):
        _fold(out / "seed0" / f"fold{k}", rng, k)
    new = tmp_path / "crossfit.ckpt"
    assert cv.main(["crossfit", str(out), "--apply", str(trained_ckpt), "--to", str(new), "--n-resamples", "20"]) == 0
    spec, _ = load_checkpoint(new)
    assert spec.calibration.details["cross_fitted"] and "3 cross-validation folds" in spec.calibration.details["fitted_on"]
    slope = spec.calibration.details["platt"]["slope"]
    assert 0.15 < slope < 0.35 and spec.calibration.temperature == pytest.approx(1 / slope)  # undoes the 4x
    predictor = Predictor.from_checkpoint(new)
    files = sorted(str(f) for f in tiny_root.rglob("*.png"))[:4]
    z = np.array([p.logits[0] for p in predictor.classify(files, files)[0]])
    got = np.array([p.probabilities["malignant"] for p in predictor.classify(files, files)[0]])
    c = spec.calibration
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(z + c.logit_shift) / c.temperature)), atol=1e-6)
    with pytest.raises(SystemExit):
        cv.main(["crossfit", str(out), "--apply", str(trained_ckpt), "--to", str(trained_ckpt)])


def test_compare_of_binary_variants_reports_malignant_sensitivity_first(tmp_path, capsys):
    """`cv compare` on two binary variants of the same folds: the binary figures, paired differences."""
    rng = np.random.default_rng(2)
    for k in range(3):
        job = tmp_path / "rcv" / "seed0" / f"fold{k}"
        _fold(job, rng, k)
        table = pd.read_csv(job / "report" / "predictions.csv", keep_default_na=False)
        table["decision"] = "malignant"  # a rule that calls everything malignant: sensitivity 1, specificity 0
        (job / "all").mkdir()
        table.to_csv(job / "all" / "predictions.csv", index=False)
    seed0 = tmp_path / "rcv" / "seed0"
    out = tmp_path / "cmp.json"
    assert cv.main(["compare", f"base={seed0}", f"everything malignant={seed0}:all", "--n-resamples", "100",
                    "--out", str(out)]) == 0
    assert "sensitivity/malignant" in capsys.readouterr().out.splitlines()[0].split("|")[2]
    result = json.loads(out.read_text())["variants"]
    assert result["everything malignant"]["sensitivity/malignant"]["value"] == 1.0
    assert result["everything malignant"]["specificity/malignant"]["value"] == 0.0
    assert result["everything malignant"]["auc/malignant_vs_benign"]["difference"] == pytest.approx(0.0)
