"""Cross-validation: pooling folds (`python -m lungcnn.cv summary`), paired comparison (`compare`) and the
repeated CV (`run`) end to end. Fold predictions are written in lungcnn's prediction schema."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcnn.cli import cv
from lungcnn.data.synthetic import make_synthetic_dataset
from lungcnn.evaluation import binary_metrics
from lungcnn.evaluation.crossval import aggregate
from lungcnn.inference import schema
from lungcnn.inference.predictor import Prediction
from lungcnn.task import make_task

from .conftest import tiny_overrides


def _write_predictions(path: Path, names: list[str], files: list[str], labels: np.ndarray, cal: np.ndarray,
                       uncal: np.ndarray, weights=None) -> None:
    """A fold's predictions.csv as lungcnn.evaluate writes it (probabilities per class, labels as names)."""
    task = make_task("binary" if len(names) == 2 else "multiclass", names)
    w = np.ones(len(names)) if weights is None else np.asarray(weights)
    decisions = (cal * w).argmax(1)
    predictions = [Prediction(f, tuple(np.log(c[1:] / c[:1]).tolist()[: task.outputs]), dict(zip(names, map(float, c))),
                              dict(zip(names, map(float, u))), names[d]) for f, c, u, d in zip(files, cal, uncal, decisions)]
    schema.write_csv(path, task, predictions, [names[k] for k in labels])


def _fake_fold(root: Path, fold: int, test: dict, files: list[str], predictions: bool = True) -> Path:
    job = root / str(fold)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- experiment=iqothnccd\n- data.n_folds=2\n- data.fold={fold}\n")
    (job / "metrics.json").write_text(json.dumps({"val": {"accuracy": 1.0}, "test": test, "seed": 0}))
    split = ["test" if i % 2 == fold else "train" for i in range(len(files))]
    pd.DataFrame({"file": files, "label": [i % 3 == 0 for i in range(len(files))], "group": files,
                  "split": split}).to_csv(job / "split.csv", index=False)
    if predictions:
        rng = np.random.default_rng(fold)
        tested = [f for f, s in zip(files, split) if s == "test"]
        labels = np.arange(len(tested)) % 2
        prob = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, len(tested)), 0, 1)
        per_class = np.stack([1 - prob, prob], axis=1)
        _write_predictions(job / "report" / "predictions.csv", ["benign", "malignant"], tested, labels, per_class,
                           per_class)
    return job


def test_aggregate_cv_mean_std_and_pooled_predictions(tmp_path, capsys):
    files = [f"x/{i}.png" for i in range(20)]
    multirun = tmp_path / "multirun"
    jobs = [_fake_fold(multirun, 0, {"accuracy": 0.8, "roc_auc": 0.9}, files),
            _fake_fold(multirun, 1, {"accuracy": 0.6, "roc_auc": 0.7}, files)]
    assert cv.main(["summary", "--multirun", str(multirun), "--n-resamples", "200"]) == 0
    assert "mean ± std" in capsys.readouterr().out
    summary = json.loads((multirun / "cv_summary.json").read_text())
    assert [r["fold"] for r in summary["runs"]] == [0, 1]
    acc = summary["per_fold"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.7) and acc["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["per_fold"]["roc_auc"]["mean"] == pytest.approx(0.8)
    checks = summary["split_checks"]
    assert checks["distinct_test_images"] == 20 and checks["images_in_several_test_folds"] == 0
    assert checks["test_images_sharing_a_group_with_train"] == [0, 0]
    pooled = pd.concat([pd.read_csv(j / "report" / "predictions.csv") for j in jobs])
    expected = binary_metrics(np.array(pooled["probability_malignant"]), np.array(pooled["label"] == "malignant"))
    got = summary["pooled"]["calibrated"]
    assert got["metrics"]["roc_auc"] == pytest.approx(expected["roc_auc"])
    lo, hi = got["ci95"]["roc_auc"]
    assert lo <= expected["roc_auc"] <= hi


def test_aggregate_cv_without_predictions_and_with_repeated_folds(tmp_path, capsys):
    files = [f"x/{i}.png" for i in range(10)]
    a = _fake_fold(tmp_path / "a", 0, {"accuracy": 0.5}, files, predictions=False)
    b = _fake_fold(tmp_path / "b", 1, {"accuracy": 0.7}, files, predictions=False)
    summary = aggregate([a, b])
    assert summary["pooled"]["available"] is False and summary["per_fold"]["accuracy"]["mean"] == pytest.approx(0.6)
    c = _fake_fold(tmp_path / "c", 1, {"accuracy": 0.9}, files, predictions=False)
    with pytest.raises(SystemExit) as exit_info:
        cv.main(["summary", str(a), str(b), str(c)])
    assert exit_info.value.code == 2 and "data.fold" in capsys.readouterr().err


NAMES = ["normal", "benign", "malignant"]


def _fake_three_class_multirun(multirun: Path, weights_per_fold, boost: float = 0.3, seed: int = 0) -> Path:
    """Two K-class fold jobs as lungcnn.evaluate leaves them; `boost` moves probability to the true class."""
    rng = np.random.default_rng(seed)
    for fold, weights in enumerate(weights_per_fold):
        job = multirun / str(fold)
        (job / "report").mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({"test": {"balanced_accuracy": 0.5 + fold / 10}}))
        files = [f"f{fold}_{i}.png" for i in range(30)]
        labels = np.arange(30) % 3
        cal = rng.dirichlet([1, 1, 1], 30)
        cal[np.arange(30), labels] += boost
        cal /= cal.sum(1, keepdims=True)
        _write_predictions(job / "report" / "predictions.csv", NAMES, files, labels, cal, cal, weights)
        pd.DataFrame({"file": files, "label": labels, "group": [f"s{fold}_{i // 3}" for i in range(30)],
                      "split": "test"}).to_csv(job / "split.csv", index=False)
    return multirun


def test_aggregate_cv_pools_three_class_folds_with_each_folds_decision_rule(tmp_path, capsys):
    """K-class folds: pooled balanced accuracy follows each fold's own decisions (its `decision` column, here
    from different class weights per fold); intervals come from resampling whole series."""
    multirun = _fake_three_class_multirun(tmp_path / "multirun", ([0.1, 1.0, 0.1], [1.0, 1.0, 1.0]))
    assert cv.main(["summary", "--multirun", str(multirun), "--n-resamples", "100"]) == 0
    assert "auc/benign_vs_normal" in capsys.readouterr().out
    pooled = json.loads((multirun / "cv_summary.json").read_text())["pooled"]
    assert pooled["kind"] == "multiclass" and pooled["bootstrap"]["unit"] == "series" and pooled["n_series"] == 20
    both = pd.concat([pd.read_csv(multirun / str(f) / "report" / "predictions.csv") for f in (0, 1)])
    recall = [(both["decision"][both["label"] == n] == n).mean() for n in NAMES]
    cal = pooled["calibrated"]
    assert cal["metrics"]["balanced_accuracy"] == pytest.approx(np.mean(recall))
    lo, hi = cal["ci95"]["auc/benign_vs_normal"]
    assert lo < cal["metrics"]["auc/benign_vs_normal"] < hi
    assert pooled["uncalibrated"]["metrics"]["balanced_accuracy"] != cal["metrics"]["balanced_accuracy"]


def test_compare_cv_pairs_variants_on_the_same_series(tmp_path, capsys):
    weights = ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    base = _fake_three_class_multirun(tmp_path / "base", weights, boost=0.1)
    better = _fake_three_class_multirun(tmp_path / "better", weights, boost=0.6)
    out = tmp_path / "cmp.json"
    assert cv.main(["compare", f"base={base}", f"better={better}", "--n-resamples", "200", "--out", str(out)]) == 0
    assert "Δ +" in capsys.readouterr().out
    result = json.loads(out.read_text())
    gain = result["variants"]["better"]["balanced_accuracy"]
    assert gain["difference"] > 0 and gain["difference_ci95"][0] > 0  # paired: the whole interval is above 0
    assert result["variants"]["base"]["balanced_accuracy"]["difference"] == 0
    other = tmp_path / "other"
    _fake_three_class_multirun(other, weights)
    (other / "1" / "report" / "predictions.csv").write_text((other / "0" / "report" / "predictions.csv").read_text())
    with pytest.raises(SystemExit):
        cv.main(["compare", f"base={base}", f"other={other}"])
    assert "several test folds" in capsys.readouterr().err


def test_series_bootstrap_keeps_every_class_and_widens_intervals_for_clustered_slices():
    from lungcnn.metrics.bootstrap import bootstrap_ci, group_resample_indices

    y = np.repeat([0, 1], 40)
    groups = np.repeat(np.arange(8), 10)  # 4 series per class, 10 near-identical slices each
    for idx in group_resample_indices(y, groups, 20, seed=0):
        assert set(np.unique(groups[idx])) <= set(range(8)) and len(np.unique(y[idx])) == 2
        assert len(np.unique(groups[idx][y[idx] == 0])) <= 4
    p = np.repeat(np.random.default_rng(1).uniform(0.2, 0.8, 8), 10)
    image_lo, image_hi = bootstrap_ci(binary_metrics, p, y, n_resamples=300, seed=0)["roc_auc"]
    series_lo, series_hi = bootstrap_ci(binary_metrics, p, y, n_resamples=300, seed=0, groups=groups)["roc_auc"]
    assert series_hi - series_lo > image_hi - image_lo


def test_repeated_cv_runs_repeats_of_group_disjoint_folds_and_pools_each(tmp_path, capsys):
    """`python -m lungcnn.cv run`: 2 repeats x 2 folds on a tiny 3-class set; folds group-disjoint within a
    repeat, the repeats draw other folds, and each repeat's pooled figure is recomputed from what was written."""
    root = make_synthetic_dataset(tmp_path / "data", slices_per_patient=2, image_size=48,
                                  n_patients={"normal": 4, "benign": 4, "malignant": 4})
    out = tmp_path / "rcv"
    overrides = ["experiment=iqothnccd_3class", *tiny_overrides(root), "trainer.max_epochs=1",
                 "callbacks.finetune.stage1_epochs=1", "data.image_size=48"]
    # the README's order: options, then overrides, then --calibrate
    assert cv.main(["run", str(out), "--repeats", "2", "--folds", "2", "--ckpt", "last", *overrides,
                    "--n-resamples", "50", "--calibrate", "tta=none"]) == 0
    assert "per repeat" in capsys.readouterr().out
    summary = json.loads((out / "repeated_cv.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["per_repeat"]) == {"0", "1"}
    tested = {}
    for seed in (0, 1):
        splits = [pd.read_csv(out / f"seed{seed}" / f"fold{k}" / "split.csv") for k in (0, 1)]
        for s in splits:  # no series in both train and test of a fold
            assert not set(s.loc[s["split"] == "test", "group"]) & set(s.loc[s["split"] == "train", "group"])
        tested[seed] = [frozenset(s.loc[s["split"] == "test", "file"]) for s in splits]
        tables = [schema.Table.read(out / f"seed{seed}" / f"fold{k}" / "report" / "predictions.csv") for k in (0, 1)]
        frames = [schema.Table(t.frame[t.readable & t.in_domain]) for t in tables]  # flagged rows have no class
        labels = np.concatenate([f.label_indices() for f in frames])
        decisions = np.concatenate([f.decision_indices() for f in frames])
        recall = np.mean([(decisions[labels == c] == c).mean() for c in range(3)])
        assert summary["per_repeat"][str(seed)]["calibrated"]["metrics"]["balanced_accuracy"] == pytest.approx(recall)
    assert set(tested[0]) != set(tested[1])  # another seed, other folds
    spread = summary["over_repeats"]["calibrated/balanced_accuracy"]
    assert spread["min"] <= spread["mean"] <= spread["max"] and len(spread["values"]) == 2
    # Interrupted: one job never started, one cut short before its metrics (checkpoints kept). Run it again.
    finished = (out / "seed0" / "fold0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    shutil.rmtree(out / "seed1" / "fold1")
    (out / "seed0" / "fold1" / "metrics.json").unlink()
    shutil.rmtree(out / "seed0" / "fold1" / "report")
    assert cv.main(["run", str(out), "--repeats", "2", "--folds", "2", "--ckpt", "last", *overrides,
                    "--n-resamples", "50", "--calibrate", "tta=none"]) == 0
    assert (out / "seed0" / "fold0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == finished  # not retrained
    for job in ("seed0/fold1", "seed1/fold1"):
        assert (out / job / "metrics.json").is_file() and (out / job / "report" / "predictions.csv").is_file()


def test_cv_takes_overrides_after_options_and_refuses_unknown_or_abbreviated_options():
    args = cv.parse_args(["run", "out", "--repeats", "2", "experiment=demo", "seed=1", "--calibrate", "method=isotonic"])
    assert args.overrides == ["experiment=demo", "seed=1"] and args.calibrate == ["method=isotonic"]
    for argv in (["run", "out", "--repeat", "2", "experiment=demo"], ["run", "out", "experiment=demo", "--nope"],
                 ["series", "--multirun", "x", "stray=1"]):
        with pytest.raises(SystemExit):
            cv.parse_args(argv)


def test_cv_run_refuses_overrides_swallowed_by_calibrate_before_training(tmp_path, capsys):
    """`--calibrate` takes every KEY=VALUE after it: overrides put there would train the wrong recipe for hours and
    then crash in calibrate; the run stops at once with one line instead."""
    with pytest.raises(SystemExit) as stop:
        cv.main(["run", str(tmp_path / "out"), "--calibrate", "method=isotonic", "experiment=demo", "data.root=x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "data.root, experiment: not options of lungcnn.calibrate" in err and "after the Hydra overrides" in err
    assert not (tmp_path / "out").exists()  # nothing trained
