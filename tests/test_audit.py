"""The leakage audit (lungcnn-audit)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from lungcnn.cli import audit as audit_command
from lungcnn.data.audit import CLASS_FOLDERS, audit
from lungcnn.data.audit.hashing import hamming, near_duplicate_pairs, perceptual_hash
from lungcnn.data.audit.series import numbered_neighbours
from lungcnn.data.catalog import scan_folder
from lungcnn.data.io import read_image

from .conftest import CONF, SHARED_DATA

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
