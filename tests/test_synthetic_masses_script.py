"""scripts/synthetic_masses.py end to end on a tiny drawn copy of the shared sources' layout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungcnn.data.io import LungWindow
from lungcnn.data.synthetic.dicom import ct_series
from lungcnn.data.synthetic.phantom import render_patient

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pngs(folder: Path, cls: str, n: int, seed: int) -> list[str]:
    """`n` slices of one drawn patient written into `folder`; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{cls}_{seed}_{k}.png" for k in range(n)]
    for name, image in zip(names, render_patient(np.random.default_rng(seed), cls, n, 192)):
        Image.fromarray(image).save(folder / name)
    return names


def _shared(root: Path) -> Path:
    _pngs(root / "luna16-normal-dev" / "normal", "normal", 4, 0)
    for k, folder in enumerate(("adenocarcinoma", "large.cell.carcinoma", "squamous.cell.carcinoma", "normal")):
        _pngs(root / "chestct-kaggle-dev" / folder, "normal" if folder == "normal" else "malignant", 2, 10 + k)
    iq = root / "iqothnccd-dev"
    _pngs(iq / "Normal cases", "normal", 2, 20)
    rows = []
    for folder, cls, label in (("Bengin cases", "benign", "Benign"), ("Malignant cases", "malignant", "Malignant")):
        for seed in (30, 31):  # two series a class, two slices each
            for name in _pngs(iq / folder, cls, 2, seed + len(rows)):
                rows.append({"file": f"{folder}/{name}", "label": label, "group": f"{cls}{seed}"})
    pd.DataFrame(rows).to_csv(iq / "groups.csv", index=False)
    series = root / "lung-pet-ct-dx-dev" / "A0001"
    series.mkdir(parents=True)
    boxes = []
    # Stored through the model window's inverse, so that the script's 50/400 rendering shows the phantom as drawn.
    for k, data in enumerate(ct_series(4, 512, cls="malignant", seed=40, window=LungWindow(level=50, width=400))):
        (series / f"1-{k + 1:02d}.dcm").write_bytes(data)
        tumour = k in (1, 2)
        boxes.append({"file": f"A0001/1-{k + 1:02d}.dcm", "instance_number": k + 1, "tumour": int(tumour),
                      **({"xmin": 300, "ymin": 220, "xmax": 360, "ymax": 280} if tumour else {})})
    pd.DataFrame(boxes).to_csv(root / "lung-pet-ct-dx-dev" / "boxes.csv", index=False)
    return root


@pytest.mark.skipif(not _script("probe_features").TF_WEIGHTS.is_file(), reason="needs ../shared/weights (TF MobileNetV2)")
def test_synthetic_masses_runs_end_to_end_and_reports_each_seed_and_their_ensemble(tmp_path):
    shared = _shared(tmp_path / "shared")
    out = tmp_path / "masses.json"
    assert _script("synthetic_masses").main(["--shared", str(shared), "--out", str(out), "--seeds", "0", "1",
                                             "--masses", "2", "--cache", str(tmp_path / "cache")]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["seed"] for r in results] == [0, 1, "ensemble"]
    for r in results:
        a = r["annotated"]
        assert 0 <= a["auc"] <= 1 and 1 <= a["first_tumour_rank"] <= 4 and a["top_tile_overlaps_box"].endswith("/2")
        assert 0 <= a["tumours_removed"]["auc"] <= 1 and len(a["slice_score"]) == 4
        assert r["iqothnccd"]["series"] == 4 and 0 <= r["iqothnccd"]["series_auc_top1"] <= 1
        assert 0 <= r["chestct_kaggle_without_its_normals"]["auc"] <= 1
    assert results[0]["positives"] > 0 and results[0]["tiles"] > results[0]["positives"]
    # The training tiles are cached per seed: a second run reads them and gives the same figures.
    again = tmp_path / "again.json"
    _script("synthetic_masses").main(["--shared", str(shared), "--out", str(again), "--seeds", "0", "1",
                                      "--masses", "2", "--cache", str(tmp_path / "cache")])
    assert json.loads(again.read_text()) == json.loads(out.read_text())
