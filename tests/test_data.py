"""Catalog, splits, preprocessing, sampler weights and the data module's bad-input messages."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungcnn.data.catalog import scan_folder
from lungcnn.data.datamodule import LungCTDataModule
from lungcnn.data.splits import assign_splits, load_split, save_split
from lungcnn.data.transforms import to_model_grid
from lungcnn.errors import LungCNNInputError

FOLDERS = {"benign": "benign", "malignant": "malignant", "normal": "normal"}
BINARY = ["benign", "malignant"]


def _dm(root, **kwargs) -> LungCTDataModule:
    args = dict(root=str(root), class_folders=FOLDERS, class_names=BINARY, image_size=64, batch_size=4)
    return LungCTDataModule(**{**args, **kwargs})


def test_scan_reads_groups_and_labels(tiny_root):
    frame = scan_folder(tiny_root, FOLDERS, BINARY)
    assert len(frame) == 30 and frame["label"].tolist().count(1) == 18
    assert frame["group"].nunique() == 10
    assert (frame["label"] == (frame["class_name"] == "malignant")).all()


def test_normal_folder_drop_negative_or_class(tmp_path, tiny_root):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    (root / "normal").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "normal" / "n1.png")
    assert len(scan_folder(root, FOLDERS, BINARY, "drop")) == 30
    negative = scan_folder(root, FOLDERS, BINARY, "negative")
    assert len(negative) == 31 and negative.iloc[-1]["label"] == 0
    three = scan_folder(root, FOLDERS, ["normal", "benign", "malignant"], "class")
    assert sorted(three["label"].unique()) == [0, 1, 2]
    with pytest.raises(LungCNNInputError, match="normal_as"):
        scan_folder(root, FOLDERS, BINARY, "sometimes")


@pytest.mark.parametrize("problem, match", [("missing", "not found"), ("unknown", "unknown class folder"),
                                            ("empty", "no images"), ("noclass", "no images for class")])
def test_folder_problems_name_the_folder(tmp_path, tiny_root, problem, match):
    root = tmp_path / "data"
    if problem != "missing":
        shutil.copytree(tiny_root, root)
    if problem == "unknown":
        (root / "tumours").mkdir()
    if problem == "empty":
        for f in (root / "benign").iterdir():
            f.unlink()
    if problem == "noclass":
        shutil.rmtree(root / "benign")
    with pytest.raises(LungCNNInputError, match=match):
        scan_folder(root, FOLDERS, BINARY)


def test_grouped_split_keeps_groups_together_and_is_seeded(tiny_root, tmp_path):
    frame = scan_folder(tiny_root, FOLDERS, BINARY)
    split = assign_splits(frame, val_fraction=0.2, test_fraction=0.3, seed=3)
    assert set(split) == {"train", "val", "test"}
    assert (pd.DataFrame({"g": frame["group"], "s": split}).groupby("g")["s"].nunique() == 1).all()
    assert split.equals(assign_splits(frame, val_fraction=0.2, test_fraction=0.3, seed=3))
    frame["split"] = split
    save_split(frame, tmp_path / "split.csv")
    assert load_split(tmp_path / "split.csv", frame).equals(split)
    with pytest.raises(LungCNNInputError, match="not in the split file"):
        load_split(tmp_path / "split.csv", pd.concat([frame, frame.assign(file="extra.png")]))


def test_image_level_split_ignores_groups(tiny_root):
    frame = scan_folder(tiny_root, FOLDERS, BINARY)
    split = assign_splits(frame, val_fraction=0.2, test_fraction=0.3, seed=0, grouped=False)
    assert (pd.DataFrame({"g": frame["group"], "s": split}).groupby("g")["s"].nunique() > 1).any()


def test_cross_validation_folds_cover_every_group_once(tiny_root):
    frame = scan_folder(tiny_root, FOLDERS, BINARY)
    tested = [frame["group"][assign_splits(frame, n_folds=3, fold=i, val_fraction=0.2) == "test"] for i in range(3)]
    groups = [g for fold in tested for g in set(fold)]
    assert sorted(groups) == sorted(frame["group"].unique())
    with pytest.raises(LungCNNInputError, match="data.fold"):
        assign_splits(frame, n_folds=3, fold=3)


def test_to_model_grid_pads_wide_images_with_air():
    wide = np.ones((50, 100), np.float32)
    grid = to_model_grid(wide, 64)
    assert grid.shape == (64, 64) and grid.dtype == np.uint8
    assert grid[:10].max() == 0 and grid[-10:].max() == 0  # padding rows are black (air)
    assert grid[32].min() == 255  # the image itself, not stretched


def test_datamodule_sampler_weights_and_cache(tiny_root, tmp_path):
    dm = _dm(tiny_root, output_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.3)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.images.shape == (30, 64, 64) and dm.images.dtype == np.uint8
    assert (tmp_path / "split.csv").is_file()
    loader = dm.train_dataloader()
    counts = dm.class_counts("train")
    weights = loader.sampler.weights.numpy()
    labels = dm._subset("train")[1]
    np.testing.assert_allclose(weights, 1.0 / counts[labels])
    # Each class carries the same total sampling weight.
    assert np.isclose(weights[labels == 0].sum(), weights[labels == 1].sum())
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and x.dtype.is_floating_point
    loss_dm = _dm(tiny_root, imbalance="loss")
    loss_dm.setup("fit")
    counts = loss_dm.class_counts()
    assert loss_dm.pos_weight() == pytest.approx(counts[0] / counts[1])


def test_unreadable_image_is_skipped_not_fatal(tmp_path, tiny_root):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    (root / "benign" / "broken.png").write_bytes(b"not a png")
    dm = _dm(root)
    dm.setup("fit")
    assert len(dm.skipped) == 1 and "broken.png" in dm.skipped[0]
    assert len(dm.frame) == 30


@pytest.mark.parametrize("kwargs, match", [(dict(image_size=16), "image_size"), (dict(imbalance="x"), "imbalance"),
                                           (dict(batch_size=0), "batch_size")])
def test_bad_settings_are_named(tiny_root, kwargs, match):
    with pytest.raises(LungCNNInputError, match=match):
        _dm(tiny_root, **kwargs)
