"""The leakage audit (lungcnn-audit) and cross-validation (scripts/run_cv.sh, aggregate_cv.py, compare_cv.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from lungcnn import audit as audit_command
from lungcnn.data.audit import CLASS_FOLDERS, audit
from lungcnn.data.audit.hashing import hamming, near_duplicate_pairs, perceptual_hash
from lungcnn.data.audit.series import numbered_neighbours
from lungcnn.data.catalog import scan_folder
from lungcnn.data.io import read_image
from lungcnn.data.synthetic import make_synthetic_dataset
from lungcnn.evaluation import binary_metrics

from .conftest import CONF, ROOT, SHARED_DATA, tiny_overrides

COPY = "malignant/copy_of_benign.png"
ORIGINAL = "benign/benign_p000_s00.png"


def _copy(tiny_root: Path, dest: Path, with_duplicate: bool = True) -> Path:
    root = dest / "data"
    shutil.copytree(tiny_root, root)
    if with_duplicate:  # an exact byte copy filed under the other class
        shutil.copy(root / ORIGINAL, root / COPY)
    return root


@pytest.fixture(scope="module")
def dup_root(tiny_root, tmp_path_factory) -> Path:
    return _copy(tiny_root, tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def audited(dup_root):
    # The synthetic phantoms share one anatomy template, so two patients can be 2 bits apart at the
    # 9x8 thumbnail; 1 bit keeps them apart (the default 2 merges one pair of patients, checked below).
    return audit(dup_root, threshold=1)


def test_class_folders_match_the_data_config():
    assert OmegaConf.to_container(OmegaConf.load(CONF / "data" / "folder.yaml").class_folders) == CLASS_FOLDERS


def test_hash_is_close_for_a_noised_copy_and_far_for_other_images(tiny_root):
    image = read_image(tiny_root / ORIGINAL)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.01, image.shape), 0, 1).astype(np.float32)
    h = perceptual_hash(image)
    assert 0 <= h < 2**64
    assert hamming(h, perceptual_hash(noisy)) <= 2
    assert hamming(h, perceptual_hash(np.rot90(image).copy())) >= 16  # a symmetric body mirrors onto itself
    texture = np.random.default_rng(1).random((8, 8)).repeat(8, 0).repeat(8, 1).astype(np.float32)
    assert hamming(h, perceptual_hash(texture)) >= 16


def test_near_duplicate_pairs_match_brute_force():
    hashes = np.random.default_rng(0).integers(0, 2**63, 40).tolist() * 2  # every hash twice: distance 0
    hashes[5] ^= 0b101  # one pair 2 bits apart
    found = near_duplicate_pairs(hashes, 2, chunk=7)
    brute = [(i, j, hamming(a, b)) for i, a in enumerate(hashes) for j, b in enumerate(hashes)
             if i < j and hamming(a, b) <= 2]
    assert sorted(map(tuple, found.tolist())) == sorted(brute)
    assert (5, 45, 2) in brute


def test_numbered_neighbours_link_next_numbers_within_a_folder_and_name_pattern():
    files = ["A/case (1).jpg", "A/case (2).jpg", "A/case (10).jpg", "B/case (3).jpg", "A/scan.jpg",
             "A/p001_s00.png", "A/p001_s01.png", "A/p002_s00.png"]
    assert sorted(numbered_neighbours(files)) == [(0, 1), (1, 2), (5, 6)]


def test_audit_finds_the_exact_duplicate_and_the_mixed_label_group(audited):
    _, report = audited
    exact = report["exact_duplicates"]
    assert exact["byte_identical_sets"] == [[ORIGINAL, COPY]]
    assert exact["byte_identical_pairs"] == exact["pixel_identical_pairs"] == 1
    [mixed] = report["groups"]["mixed_label"]
    assert mixed["labels"] == {"benign": 3, "malignant": 1} and COPY in mixed["files"]
    assert report["near_duplicates"]["pairs_across_classes"] >= 1


def test_audit_groups_the_slices_of_each_patient(audited, dup_root):
    frame, report = audited
    assert report["agreement_with_existing"]["adjusted_rand_index"] > 0.9
    assert report["groups"]["n_groups"] == 10
    # With the default threshold too, no patient is ever split across groups (merging is the safe error).
    default, _ = audit(dup_root)
    assert (default.groupby("existing_group")["audit_group"].nunique() == 1).all()


def test_leakage_is_higher_under_a_random_split_than_a_grouped_one(audited):
    leak = audited[1]["leakage"]
    assert leak["random"]["same_audit_group_in_train"] > 0
    assert leak["grouped_audit"]["same_audit_group_in_train"] == 0
    assert leak["grouped_audit"]["near_duplicate_in_train"] == 0
    assert leak["random"]["any_leak"] > leak["grouped_audit"]["any_leak"]
    assert leak["grouped_existing"]["same_existing_group_in_train"] == 0


def test_cli_writes_groups_the_data_module_reads_and_refuses_to_overwrite(tiny_root, tmp_path, capsys):
    root = _copy(tiny_root, tmp_path)
    (root / "groups.csv").unlink()
    report = tmp_path / "audit.json"
    assert audit_command.main([str(root), "--threshold", "1", "--report", str(report)]) == 0
    assert "exact duplicates: 1 byte-identical" in capsys.readouterr().out
    written = pd.read_csv(root / "groups.csv")
    assert list(written.columns) == ["file", "label", "group"] and len(written) == 31
    assert set(written["label"]) == {"benign", "malignant"}
    frame = scan_folder(root, CLASS_FOLDERS, ["benign", "malignant"])
    assert frame["group"].nunique() == 10 and not frame["group"].str.startswith("file:").any()
    assert json.loads(report.read_text())["groups_csv"] == str(root / "groups.csv")

    before = (root / "groups.csv").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        audit_command.main([str(root), "--report", str(report)])
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert (root / "groups.csv").read_bytes() == before
    assert audit_command.main([str(root), "--out", str(tmp_path / "other.csv"), "--report", str(report)]) == 0
    assert audit_command.main([str(root), "--threshold", "1", "--force", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["agreement_with_existing"]["adjusted_rand_index"] == 1.0


def test_cli_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        audit_command.main([str(tmp_path / "nope"), "--report", str(tmp_path / "a.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_shortcut_check_sees_an_image_size_shortcut(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path, with_duplicate=False)
    for path in (root / "malignant").glob("*.png"):
        Image.open(path).resize((80, 64)).save(path)
    _, report = audit(root, threshold=1)
    size = report["shortcuts"]["image_size"]
    assert size["malignant_vs_benign"]["value"] == 1.0
    assert "skipped" in size["benign_vs_normal"] and "skipped" in size["three_class"]
    assert report["image_sizes"] == {"benign": {"64x64": 12}, "malignant": {"80x64": 18}}
    assert 0.0 <= report["shortcuts"]["intensity_histogram"]["malignant_vs_benign"]["value"] <= 1.0


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared IQ-OTH/NCCD dev set is not here")
def test_audit_runs_on_a_subset_of_the_real_dev_set(tmp_path):
    root = tmp_path / "data"
    for folder in ("Bengin cases", "Malignant cases"):
        (root / folder).mkdir(parents=True)
        files = sorted((SHARED_DATA / folder).glob("*.jpg"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
        for path in files[:30]:
            (root / folder / path.name).symlink_to(path)
    (root / "groups.csv").symlink_to(SHARED_DATA / "groups.csv")
    report_path = tmp_path / "audit.json"
    assert audit_command.main([str(root), "--out", str(tmp_path / "groups.csv"), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["n_images"] == 60 and report["classes"] == {"benign": 30, "malignant": 30}
    assert report["groups"]["n_groups"] < 30  # numbered neighbours are slices of a few scans
    assert 0.0 < report["agreement_with_existing"]["adjusted_rand_index"] <= 1.0
    assert report["seconds"] < 20


# --- scripts/aggregate_cv.py ---------------------------------------------------------------------


def _aggregate_cv():
    spec = importlib.util.spec_from_file_location("aggregate_cv", ROOT / "scripts" / "aggregate_cv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        (job / "report").mkdir()
        pd.DataFrame({"file": tested, "label": labels, "logit": 0.0, "probability": prob,
                      "calibrated_probability": prob, "decision": (prob >= 0.5).astype(int)}).to_csv(
            job / "report" / "predictions.csv", index=False)
    return job


def test_aggregate_cv_mean_std_and_pooled_predictions(tmp_path, capsys):
    cv = _aggregate_cv()
    files = [f"x/{i}.png" for i in range(20)]
    multirun = tmp_path / "multirun"
    jobs = [_fake_fold(multirun, 0, {"accuracy": 0.8, "roc_auc": 0.9}, files),
            _fake_fold(multirun, 1, {"accuracy": 0.6, "roc_auc": 0.7}, files)]
    assert cv.main(["--multirun", str(multirun), "--n-resamples", "200"]) == 0
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
    expected = binary_metrics(np.array(pooled["probability"]), np.array(pooled["label"]))
    got = summary["pooled"]["probability"]
    assert got["metrics"]["roc_auc"] == pytest.approx(expected["roc_auc"])
    lo, hi = got["ci95"]["roc_auc"]
    assert lo <= expected["roc_auc"] <= hi


def test_aggregate_cv_without_predictions_and_with_repeated_folds(tmp_path, capsys):
    cv = _aggregate_cv()
    files = [f"x/{i}.png" for i in range(10)]
    a = _fake_fold(tmp_path / "a", 0, {"accuracy": 0.5}, files, predictions=False)
    b = _fake_fold(tmp_path / "b", 1, {"accuracy": 0.7}, files, predictions=False)
    summary = cv.aggregate([a, b])
    assert summary["pooled"]["available"] is False and summary["per_fold"]["accuracy"]["mean"] == pytest.approx(0.6)
    c = _fake_fold(tmp_path / "c", 1, {"accuracy": 0.9}, files, predictions=False)
    with pytest.raises(SystemExit) as exit_info:
        cv.main([str(a), str(b), str(c)])
    assert exit_info.value.code == 2 and "data.fold" in capsys.readouterr().err


NAMES = ["normal", "benign", "malignant"]


def _fake_three_class_multirun(multirun: Path, weights_per_fold, boost: float = 0.3, seed: int = 0) -> Path:
    """Two K-class fold jobs as lungcnn.evaluate leaves them; `boost` moves probability to the true class."""
    rng = np.random.default_rng(seed)
    for fold, weights in enumerate(weights_per_fold):
        job = multirun / str(fold)
        (job / "report").mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({"test": {"balanced_accuracy": 0.5 + fold / 10}}))
        (job / "report" / "report.json").write_text(json.dumps({"decision_weights": weights}))
        files = [f"f{fold}_{i}.png" for i in range(30)]
        labels = np.arange(30) % 3
        cal = rng.dirichlet([1, 1, 1], 30)
        cal[np.arange(30), labels] += boost
        cal /= cal.sum(1, keepdims=True)
        frame = pd.DataFrame({"file": files, "label": [NAMES[k] for k in labels]})
        for j, n in enumerate(NAMES):
            frame[f"p_{n}"] = cal[:, j]
            frame[f"calibrated_p_{n}"] = cal[:, j]
        frame["decision"] = [NAMES[k] for k in (cal * weights).argmax(1)]
        frame.to_csv(job / "report" / "predictions.csv", index=False)
        pd.DataFrame({"file": files, "label": labels, "group": [f"s{fold}_{i // 3}" for i in range(30)],
                      "split": "test"}).to_csv(job / "split.csv", index=False)
    return multirun


def test_aggregate_cv_pools_three_class_folds_with_each_folds_decision_rule(tmp_path, capsys):
    """K-class folds: pooled balanced accuracy follows each fold's recorded class weights; intervals come
    from resampling whole series."""
    cv = _aggregate_cv()
    multirun = _fake_three_class_multirun(tmp_path / "multirun", ([0.1, 1.0, 0.1], [1.0, 1.0, 1.0]))
    assert cv.main(["--multirun", str(multirun), "--n-resamples", "100"]) == 0
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
    spec = importlib.util.spec_from_file_location("compare_cv", ROOT / "scripts" / "compare_cv.py")
    compare_cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_cv)
    weights = ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    base = _fake_three_class_multirun(tmp_path / "base", weights, boost=0.1)
    better = _fake_three_class_multirun(tmp_path / "better", weights, boost=0.6)
    out = tmp_path / "cmp.json"
    assert compare_cv.main([f"base={base}", f"better={better}", "--n-resamples", "200", "--out", str(out)]) == 0
    assert "Δ +" in capsys.readouterr().out
    result = json.loads(out.read_text())
    gain = result["variants"]["better"]["balanced_accuracy"]
    assert gain["difference"] > 0 and gain["difference_ci95"][0] > 0  # paired: the whole interval is above 0
    assert result["variants"]["base"]["balanced_accuracy"]["difference"] == 0
    other = tmp_path / "other"
    _fake_three_class_multirun(other, weights)
    (other / "1" / "report" / "predictions.csv").write_text((other / "0" / "report" / "predictions.csv").read_text())
    with pytest.raises(SystemExit):
        compare_cv.main([f"base={base}", f"other={other}"])
    assert "several test folds" in capsys.readouterr().err


def test_run_cv_script_trains_calibrates_evaluates_and_pools_every_fold(tmp_path):
    """scripts/run_cv.sh end to end on a tiny 3-class set, two folds, from each fold's last checkpoint."""
    root = make_synthetic_dataset(tmp_path / "data", slices_per_patient=2, image_size=48,
                                  n_patients={"normal": 4, "benign": 4, "malignant": 4})
    out = tmp_path / "cv"
    overrides = ["experiment=iqothnccd_3class", *tiny_overrides(root), "trainer.max_epochs=1",
                 "callbacks.finetune.stage1_epochs=1", "data.image_size=48"]
    env = {**os.environ, "FOLDS": "2", "PY": sys.executable, "CKPT": "last", "REPORT": "report_last"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "run_cv.sh"), str(out), *overrides], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for fold in ("0", "1"):
        assert (out / fold / "checkpoints" / "last.report_last.ckpt").is_file()
        assert (out / fold / "report_last" / "predictions.csv").is_file()
    pooled = json.loads((out / "cv_summary_report_last.json").read_text())["pooled"]
    assert pooled["available"] and pooled["n"] == 24 and pooled["kind"] == "multiclass"


def test_series_bootstrap_keeps_every_class_and_widens_intervals_for_clustered_slices():
    from lungcnn.evaluation.bootstrap import bootstrap_ci, group_resample_indices

    y = np.repeat([0, 1], 40)
    groups = np.repeat(np.arange(8), 10)  # 4 series per class, 10 near-identical slices each
    for idx in group_resample_indices(y, groups, 20, seed=0):
        assert set(np.unique(groups[idx])) <= set(range(8)) and len(np.unique(y[idx])) == 2
        assert len(np.unique(groups[idx][y[idx] == 0])) <= 4
    p = np.repeat(np.random.default_rng(1).uniform(0.2, 0.8, 8), 10)
    image_lo, image_hi = bootstrap_ci(binary_metrics, p, y, n_resamples=300, seed=0)["roc_auc"]
    series_lo, series_hi = bootstrap_ci(binary_metrics, p, y, n_resamples=300, seed=0, groups=groups)["roc_auc"]
    assert series_hi - series_lo > image_hi - image_lo
