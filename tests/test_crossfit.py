"""Cross-fitted calibration (`python -m lungcnn.cv crossfit`): each fold calibrated on the other folds'
out-of-fold outputs, pooled per repeat; and a checkpoint calibrated on every fold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcnn.cli import cv
from lungcnn.evaluation import binary_metrics
from lungcnn.evaluation.compare import compare
from lungcnn.evaluation.crossfit import _apply, fit
from lungcnn.inference import schema
from lungcnn.inference.predictor import OUT_OF_DOMAIN, Prediction, Predictor
from lungcnn.models.checkpoint import load_checkpoint
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
    tables = [schema.Table.read(seed0 / f"fold{k}" / "report" / "predictions.csv") for k in range(3)]
    p = np.concatenate([t.probabilities()[:, 1] for t in tables])
    y = np.concatenate([t.label_indices() for t in tables])  # the same ECE as the repeated-CV summary's
    assert result["base"]["ece"]["value"] == pytest.approx(binary_metrics(p, y)["ece"])


def _write_repeat(out: Path, seed: int, truth: pd.DataFrame, folds: int = 3) -> None:
    """One repeat of a finished CV over the same images: series drawn into folds by `seed`; each fold's model
    outputs logit = 3 x true log-odds + its own bias and noise, its own calibration is the true probability."""
    rng = np.random.default_rng(100 + seed)
    series = truth["group"].unique()
    fold_of = dict(zip(rng.permutation(series), np.arange(series.size) % folds))
    task = make_task("binary", ["benign", "malignant"])
    for k in range(folds):
        part = truth[truth["group"].map(fold_of) == k]
        job = out / f"seed{seed}" / f"fold{k}"
        job.mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({"test": {"roc_auc": 0.9}}))
        part.assign(split="test").to_csv(job / "split.csv", index=False)
        z = 3 * part["t"].to_numpy() + rng.normal(0.5, 1.0) + rng.normal(0, 1.0, len(part))
        p, q = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-part["t"].to_numpy()))
        predictions = [Prediction(f, (float(zi),), {"benign": 1 - qi, "malignant": qi},
                                  {"benign": 1 - pi, "malignant": pi}, "malignant" if qi >= 0.5 else "benign",
                                  domain_score=0.1, in_domain=True)
                       for f, zi, pi, qi in zip(part["file"], z, p, q)]
        schema.write_csv(job / "report" / "predictions.csv", task, predictions,
                         ["malignant" if y else "benign" for y in part["label"]])


def test_crossfit_ensemble_averages_each_images_out_of_fold_logits_over_repeats(tmp_path, capsys):
    """Each image's ensemble output is the mean logit of the R fold models that never saw it (one per repeat),
    partitioned as the first repeat's folds and calibrated like a single model."""
    from lungcnn.evaluation import crossfit as cf

    rng = np.random.default_rng(3)
    rows = []
    for s in range(12):
        label = int(s % 3 != 0)
        for j, t in enumerate(rng.normal(1.0 if label else -1.0, 1.0, 5)):
            rows.append({"file": f"{'malignant' if label else 'benign'}/s{s}i{j}.png", "label": label,
                         "group": f"g{s}", "t": t})
    truth = pd.DataFrame(rows)
    out = tmp_path / "rcv"
    for seed in (0, 1):
        _write_repeat(out, seed, truth)
    assert cv.main(["crossfit", str(out), "--ensemble", "--n-resamples", "30"]) == 0
    assert "ensemble of the 2 repeats' models" in capsys.readouterr().out
    summary = json.loads((out / "repeated_cv_crossfit_platt_ensemble.json").read_text())
    repeats = [cf.read_folds(sorted(out.glob(f"seed{s}/fold*")), "report") for s in (0, 1)]
    logit = {}
    for folds in repeats:
        for fold in folds:
            for f, pi in zip(fold.files, fold.uncalibrated):
                logit.setdefault(f, []).append(np.log(pi / (1 - pi)))
    assert all(len(v) == 2 for v in logit.values()) and len(logit) == len(truth)
    members = cf.ensemble_folds(repeats)
    for member, fold0 in zip(members, repeats[0]):
        np.testing.assert_array_equal(member.files, fold0.files)  # the first repeat's partition
        np.testing.assert_allclose(member.uncalibrated, [1 / (1 + np.exp(-np.mean(logit[f]))) for f in member.files],
                                   rtol=1e-9)
    assert summary["ensemble"]["n"] == len(truth)
    assert summary["ensemble"] == {**cf.crossfit_folds(members, "platt", n_resamples=30),
                                   "members_own_calibration": summary["ensemble"]["members_own_calibration"]}
    own = summary["ensemble"]["members_own_calibration"]["metrics"]
    q = 1 / (1 + np.exp(-truth["t"].to_numpy()))
    assert own["roc_auc"] == pytest.approx(binary_metrics(q, truth["label"].to_numpy())["roc_auc"])
    shutil.copytree(out / "seed0", tmp_path / "one" / "seed0")
    with pytest.raises(SystemExit):  # one repeat has nothing to average over
        cv.main(["crossfit", str(tmp_path / "one"), "--ensemble"])
    assert "at least 2 repeats" in capsys.readouterr().err


def test_compare_pairs_the_images_every_variant_judged(tmp_path):
    """A variant whose domain guard flagged an image (no decision) is compared on the images both judged."""
    rng = np.random.default_rng(4)
    for k in range(2):
        job = tmp_path / "rcv" / "seed0" / f"fold{k}"
        _fold(job, rng, k)
        table = pd.read_csv(job / "report" / "predictions.csv", keep_default_na=False, dtype=str)
        if k == 0:
            table.loc[0, ["in_domain", "decision"]] = ["false", OUT_OF_DOMAIN]
        (job / "guarded").mkdir()
        table.to_csv(job / "guarded" / "predictions.csv", index=False)
    seed0 = tmp_path / "rcv" / "seed0"
    result = compare([f"base={seed0}", f"guarded={seed0}:guarded"], n_resamples=50)
    assert result["left_out_flagged"] == {"base": 1, "guarded": 0} and result["n"] == 2 * 30 - 1
    for key, entry in result["variants"]["guarded"].items():  # the same predictions on the same images
        assert entry["difference"] == pytest.approx(0.0, abs=1e-12), key
