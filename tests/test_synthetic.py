"""The synthetic demo data set: layout, determinism, idempotency, safety, and that lesions carry the label."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from lungcnn.data.synthetic.__main__ import main
from PIL import Image

from lungcnn.data.synthetic import CLASS_CODES, folder, make_synthetic_dataset
from lungcnn.data.synthetic.phantom import render_patient_with_masks
from lungcnn.data.synthetic.shapes import blur
from lungcnn.errors import LungCNNInputError

SMALL = {"n_patients": {"benign": 2, "malignant": 3, "normal": 1}, "slices_per_patient": 3, "image_size": 64}


def _rows(root: Path) -> list[dict]:
    with open(root / "groups.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _auc(negatives, positives) -> float:
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("default") / "synthetic")


def test_counts_layout_and_groups(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    assert root == tmp_path / "syn"
    with open(root / "groups.csv", encoding="utf-8") as f:
        assert f.readline() == "file,label,group\n"
    rows = _rows(root)
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert sorted(r["file"] for r in rows) == on_disk
    for cls, n in SMALL["n_patients"].items():
        files = sorted((root / cls).glob("*.png"))
        assert len(files) == n * SMALL["slices_per_patient"]
        groups = {r["group"] for r in rows if r["label"] == cls}
        assert len(groups) == n
    for r in rows:
        cls, name = r["file"].split("/")
        assert r["label"] == cls and "\\" not in r["file"]
        assert name.startswith(r["group"] + "_s") and r["group"].startswith(f"{cls}_p")
    per_group = {}
    for r in rows:
        per_group[r["group"]] = per_group.get(r["group"], 0) + 1
    assert set(per_group.values()) == {SMALL["slices_per_patient"]}
    notice = (root / "SYNTHETIC.txt").read_text(encoding="utf-8").lower()
    assert "synthetic" in notice and "not medical data" in notice
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name != "syn"], "temporary folders left behind"


def test_images_are_8bit_gray_of_the_asked_size(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    for row in _rows(root):
        with Image.open(root / row["file"]) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (64, 64)
            a = np.asarray(im)
        assert a.dtype == np.uint8
        assert a[0, 0] == 0 and a[-1, -1] == 0  # air outside the body is black
        assert a.max() > 180 and 60 < np.median(a[a > 0]) < 160  # bone is bright, tissue mid-gray


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _all_bytes(make_synthetic_dataset(tmp_path / "a", seed=3, **SMALL))
    b = _all_bytes(make_synthetic_dataset(tmp_path / "b", seed=3, **SMALL))
    c = _all_bytes(make_synthetic_dataset(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert sorted(c) == sorted(a)
    assert all(a[k] != c[k] for k in pngs)


def test_slices_of_a_patient_are_alike_and_patients_differ(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    load = {r["file"]: np.asarray(Image.open(root / r["file"]), float) for r in _rows(root)}
    p0 = [v for k, v in sorted(load.items()) if k.startswith("malignant/malignant_p000_")]
    p1 = [v for k, v in sorted(load.items()) if k.startswith("malignant/malignant_p001_")]
    within = np.mean([np.abs(p0[0] - x).mean() for x in p0[1:]])
    between = np.abs(p0[0] - p1[0]).mean()
    assert within < between


def test_rerun_with_same_parameters_is_a_no_op(tmp_path, monkeypatch):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    before = _all_bytes(root)

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although the data set was complete")

    monkeypatch.setattr(folder, "_write_dataset", boom)
    assert make_synthetic_dataset(tmp_path / "syn", **SMALL) == root
    assert make_synthetic_dataset(str(tmp_path / "syn"), **SMALL) == root
    assert _all_bytes(root) == before


def test_other_parameters_raise_unless_overwrite(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    with pytest.raises(LungCNNInputError, match="other parameters"):
        make_synthetic_dataset(root, seed=1, **SMALL)
    make_synthetic_dataset(root, seed=1, overwrite=True, **SMALL)
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "syn"], "temporary folders left behind"


def test_incomplete_synthetic_set_is_not_taken_as_done(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    next(root.rglob("*.png")).unlink()
    with pytest.raises(LungCNNInputError):
        make_synthetic_dataset(root, **SMALL)
    make_synthetic_dataset(root, overwrite=True, **SMALL)
    assert len(list(root.rglob("*.png"))) == len(_rows(root))


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_non_empty_folder_is_refused(tmp_path, overwrite):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(LungCNNInputError, match="not a synthetic data set"):
        make_synthetic_dataset(tmp_path / "mine", overwrite=overwrite, **SMALL)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_empty_folder_is_used_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(_rows(make_synthetic_dataset(tmp_path / "empty", **SMALL))) == 18
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LungCNNInputError, match="not a folder"):
        make_synthetic_dataset(tmp_path / "afile", **SMALL)


def test_crash_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = folder._write_dataset

    def crash(out, params):
        real(out, params)
        (out / "synthetic.json").unlink()  # as if killed just before the last file
        raise RuntimeError("disk full")

    monkeypatch.setattr(folder, "_write_dataset", crash)
    with pytest.raises(RuntimeError):
        make_synthetic_dataset(tmp_path / "syn", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_patients": {"cancer": 2}},
        {"n_patients": {}},
        {"n_patients": {"benign": 0}},
        {"image_size": 8},
        {"slices_per_patient": 0},
        {"seed": -1},
    ],
)
def test_bad_parameters_raise_input_error(tmp_path, kwargs):
    with pytest.raises(LungCNNInputError):
        make_synthetic_dataset(tmp_path / "syn", **kwargs)
    assert not (tmp_path / "syn").exists()


def test_lesions_lie_in_the_lungs_and_match_the_class():
    areas = {}
    for cls in CLASS_CODES:
        for p in range(6):
            rng = np.random.default_rng([0, CLASS_CODES[cls], p])
            for image, lung, lesion in render_patient_with_masks(rng, cls, 4, 128):
                assert image.shape == (128, 128) and lung.sum() > 500
                area = float((lesion > 0.5).sum())
                areas.setdefault(cls, []).append(area)
                if area:  # lesions sit in a lung field (a mass may press against the pleura)
                    lung_room = blur(lung, 2.0) > 0.05
                    assert (lung_room & (lesion > 0.5)).sum() >= 0.9 * area
    assert max(areas["normal"]) == 0
    assert min(areas["benign"]) > 0 and min(areas["malignant"]) > 0
    assert np.median(areas["malignant"]) > 2 * np.median(areas["benign"])


def test_lesion_makes_a_difference_but_global_brightness_barely_does(default_set):
    """A crude feature (count of lesion-bright pixels) separates patients; the mean gray level hardly does."""
    bright, mean = {}, {}
    for row in _rows(default_set):
        a = np.asarray(Image.open(default_set / row["file"]), float)
        bright.setdefault(row["label"], {}).setdefault(row["group"], []).append(
            ((a >= 150) & (a <= 215)).sum()
        )
        mean.setdefault(row["label"], {}).setdefault(row["group"], []).append(a.mean())

    def per_patient(d, cls):
        return [np.mean(v) for v in d[cls].values()]

    assert len(per_patient(bright, "benign")) == 8 and len(per_patient(bright, "malignant")) == 16
    assert _auc(per_patient(bright, "benign"), per_patient(bright, "malignant")) > 0.85
    gap = abs(np.mean(per_patient(mean, "malignant")) - np.mean(per_patient(mean, "benign")))
    assert gap < 6.0  # gray levels, against a per-patient spread of about 5


def test_cli_reports_counts(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(out), "--seed", "2", "--image-size", "48"]) == 0
    text = capsys.readouterr().out
    assert "benign: 48 images from 8 patients" in text and "malignant: 96 images from 16 patients" in text
    with Image.open(next(out.rglob("*.png"))) as im:
        assert im.size == (48, 48)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "foreign")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not a synthetic data set" in err and err.strip().count("\n") == 0
