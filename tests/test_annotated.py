"""The annotated-series evaluation: figures recomputed from its table, and a run end to end on drawn slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungcnn.evaluation.annotated import COLUMNS, evaluate_series, figures, model_to_slice


def _table(path, probability, tumour, judged, peak_in_box):
    rows = [{"file": f"s/{i}.dcm", "instance_number": i + 1, "tumour": t, "probability": p, "judged": j,
             "peak_in_box": b if t else "", "cam_lung_mass": 0.5 if j else ""}
            for i, (p, t, j, b) in enumerate(zip(probability, tumour, judged, peak_in_box))]
    pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(path, index=False)
    return path


def test_figures_from_a_hand_made_table(tmp_path):
    # Slice 0 is an abdominal slice at 0.99 the lung check stopped: not judged, so ranked last, not first.
    path = _table(tmp_path / "a.csv", [0.99, 0.2, 0.9, 0.4, 0.1], [0, 0, 1, 1, 0], [False, True, True, True, True],
                  [False, False, True, False, False])
    result = figures(path)
    assert result["auc"] == pytest.approx(1.0) and result["first_tumour_rank"] == 1
    assert result["auc_every_slice"] == pytest.approx(4 / 6)  # 0.99 outranks both tumour slices when judged
    assert result["peak_in_box"] == pytest.approx(0.5) and result["peak_in_box_k"] == 1
    assert result["judged"] == 4 and result["cam_lung_mass"] == pytest.approx(0.5)
    lo, hi = result["auc_ci95"]
    assert lo <= result["auc"] <= hi
    # The interval's matrix form gives what roc_auc_score gives on each resample (the same draws).
    from sklearn.metrics import roc_auc_score

    score, tumour = np.array([-1.0, 0.2, 0.9, 0.4, 0.1]), np.array([0, 0, 1, 1, 0]) == 1  # not judged: below all
    rng, pos, neg = np.random.default_rng(0), np.flatnonzero(tumour), np.flatnonzero(~tumour)
    boot = [roc_auc_score(tumour[i], score[i]) for i in
            (np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))] for _ in range(2000))]
    assert result["auc_ci95"] == pytest.approx([np.percentile(boot, 2.5), np.percentile(boot, 97.5)])
    flipped = figures(_table(tmp_path / "b.csv", [0.99, 0.9, 0.1, 0.2, 0.3], [0, 0, 1, 1, 0], [True] * 5, [False] * 5))
    assert flipped["auc"] == pytest.approx(0.0) and flipped["first_tumour_rank"] == 4 and flipped["novelty"] is None
    # The same slices ranked by novelty (a normal bank), as the series view ranks them; the slice not judged stays last.
    frame = pd.read_csv(path).assign(novelty=[9.0, 1.0, 1.2, 1.4, 0.8])
    frame.to_csv(tmp_path / "c.csv", index=False)
    ranked = figures(tmp_path / "c.csv")["novelty"]
    assert ranked["first_tumour_rank"] == 1 and ranked["most_suspicious"] == "s/3.dcm" and ranked["auc"] == pytest.approx(1.0)


def test_model_grid_points_map_back_to_slice_pixels():
    assert model_to_slice(0, 0, 512, 512, 224) == pytest.approx((512 / 224 / 2 - 0.5,) * 2)
    x, y = model_to_slice(111.5, 111.5, 300, 600, 224)  # the grid's centre is the slice's centre, padding undone
    assert (x, y) == pytest.approx((299.5, 149.5))


def test_evaluate_series_writes_a_table_its_figures_come_from(trained_ckpt, tmp_path):
    from PIL import Image

    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(folder / f"{i}.png")
        tumour = i in (1, 2)
        rows.append({"file": f"series/{i}.png", "instance_number": i + 1, "tumour": int(tumour),
                     "xmin": 0 if tumour else None, "ymin": 0 if tumour else None,
                     "xmax": 63 if tumour else None, "ymax": 63 if tumour else None})
    pd.DataFrame(rows).to_csv(tmp_path / "boxes.csv", index=False)
    result = evaluate_series(trained_ckpt, tmp_path / "boxes.csv", tmp_path / "out.csv", lung_check=False)
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == COLUMNS and len(table) == 4
    assert result == figures(tmp_path / "out.csv")
    assert result["tumour_slices"] == 2 and 1 <= result["first_tumour_rank"] <= 3
    # The box is the whole slice: every tumour slice's peak lies inside it.
    assert result["peak_in_box"] == 1.0 and table.loc[[0, 3], "peak_in_box"].isna().all()


def test_normal_rows_are_found_by_their_sources_class_folders():
    from lungcnn.calibration.novelty import normal_rows

    files = pd.Series(["iq/Normal cases/1.jpg", "iq/Malignant cases/2.jpg", "luna/normal/p1_z_3.png", "kg/normal/4.png"])
    data = {"sources": [{"name": "iq", "class_folders": {"Normal cases": "normal", "Malignant cases": "malignant"}},
                        {"name": "luna", "class_folders": {"normal": "normal"}},
                        {"name": "kg", "class_folders": {"normal": "not_malignant"}}]}  # not mapped to `normal`
    assert normal_rows(files, data).tolist() == [True, False, True, False]
    one_root = {"class_folders": {"Normal cases": "normal", "Bengin cases": "benign"}}
    assert normal_rows(pd.Series(["Normal cases/1.jpg", "Bengin cases/2.jpg"]), one_root).tolist() == [True, False]


def test_lesion_counterfactual_removes_only_the_box_and_ranks_again(trained_ckpt, tmp_path):
    """scripts/lesion_counterfactual.py: the inpainted box changes pixels inside it only, and the report holds the
    figures as they are and with the tumours removed."""
    import importlib.util
    import json
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).parents[1] / "scripts" / "lesion_counterfactual.py"
    spec = importlib.util.spec_from_file_location("lesion_counterfactual", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    image = np.zeros((64, 64), np.uint8)
    image[20:30, 20:30] = 255  # a bright "tumour" in a dark field
    removed = script.remove_box(image, (18, 18, 32, 32), 1.0, fill="inpaint")
    assert removed[20:30, 20:30].max() < 128 and (removed[:, 40:] == image[:, 40:]).all()
    # fill="lung": a tumour against the chest wall becomes aerated lung; the wall beside it, inside the box, stays.
    y, x = np.mgrid[:128, :128] / 128
    chest = np.zeros((128, 128), np.uint8)
    chest[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 120
    for cx in (0.3, 0.7):
        chest[((x - cx) / 0.12) ** 2 + ((y - 0.5) / 0.18) ** 2 < 1] = 10
    tumour = chest.copy()
    tumour[60:72, 80:90] = 120  # on the right lung's lateral wall (the lung spans x 74-105)
    tumour[60:72, 100:112] = 120
    box = (78, 58, 112, 74)
    emptied = script.remove_box(tumour, box, 1.0)
    assert (emptied[60:72, 80:90] == 10).all() and (emptied[:, :70] == tumour[:, :70]).all()
    assert (emptied[60:72, 108:112] == 120).all()  # chest wall: outside the lung's hull

    folder = tmp_path / "series"
    folder.mkdir()
    rows = []
    for i in range(4):
        slice_ = np.full((64, 64), 40, np.uint8)
        if i in (1, 2):
            slice_[24:40, 24:40] = 220
        Image.fromarray(slice_).save(folder / f"{i}.png")
        rows.append({"file": f"series/{i}.png", "instance_number": i + 1, "tumour": int(i in (1, 2)),
                     **({"xmin": 24, "ymin": 24, "xmax": 39, "ymax": 39} if i in (1, 2) else {})})
    pd.DataFrame(rows).to_csv(tmp_path / "boxes.csv", index=False)
    assert script.main(["--ckpt", str(trained_ckpt), "--boxes", str(tmp_path / "boxes.csv"),
                        "--out", str(tmp_path / "cf.json"), "--grow", "1.5", "--fill", "inpaint"]) == 0
    report = json.loads((tmp_path / "cf.json").read_text())
    assert set(report["as_they_are"]) == {"probability"} and report["tumour_slices"] == 2  # no normal bank
    after = report["tumours_removed"]["box x 1.5"]["probability"]
    assert 0 <= after["auc"] <= 1 and 1 <= after["first_tumour_rank"] <= 3
    assert after["mean_change_on_tumour_slices"] != 0  # the model saw the edited pixels
