"""Training end to end through the Hydra configs, as `python -m lungcnn.train` runs it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from lungcnn.errors import LungCNNInputError
from lungcnn.models.checkpoint import build_network, load_checkpoint
from lungcnn.task import make_task
from lungcnn.training.train import train

from .conftest import SHARED_DATA, make_cfg, tiny_overrides


@pytest.mark.parametrize("experiment", ["demo", "iqothnccd", "paper"])
def test_fast_dev_run_every_experiment(experiment, tiny_root, tmp_path):
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", *tiny_overrides(tiny_root), "trainer.fast_dev_run=true"])
    result = train(cfg)
    assert set(result["test"]) >= {"accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc"}
    assert (tmp_path / "split.csv").is_file() and (tmp_path / "metrics.json").is_file()


def test_tiny_training_writes_a_self_contained_checkpoint(tiny_root, tmp_path):
    cfg = make_cfg(tmp_path, tiny_overrides(tiny_root))
    result = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"] == pytest.approx(result["test"]) and 0 <= saved["test"]["roc_auc"] <= 1
    assert saved["best_checkpoint"].endswith("best.ckpt")
    spec, state = load_checkpoint(saved["best_checkpoint"])
    assert spec.class_names == ("benign", "malignant") and not spec.is_calibrated and spec.calibration.temperature == 1.0
    assert spec.preprocessing.image_size == 64 and len(spec.preprocessing.mean) == 3
    assert "synthetic" in spec.data_note
    net = build_network(spec, state)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1,)
    # A second run into the same directory is refused rather than overwriting the first.
    with pytest.raises(LungCNNInputError, match="already holds a trained run"):
        train(cfg)


def test_torchmetrics_collection_equals_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    collection = make_task("binary", ["benign", "malignant"]).make_metrics()
    collection.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels))
    got = {k: float(v) for k, v in collection.compute().items()}
    pred = (probs >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, pred).ravel()
    expected = {"accuracy": skm.accuracy_score(labels, pred), "precision": skm.precision_score(labels, pred),
                "sensitivity": skm.recall_score(labels, pred), "specificity": tn / (tn + fp),
                "f1": skm.f1_score(labels, pred), "roc_auc": skm.roc_auc_score(labels, probs)}
    assert got == pytest.approx(expected, abs=1e-5)


def test_bad_root_stops_before_training(tmp_path):
    cfg = make_cfg(tmp_path, tiny_overrides(tmp_path / "missing"))
    with pytest.raises(LungCNNInputError, match="not found"):
        train(cfg)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared IQ-OTH/NCCD dev set is not here")
def test_short_run_on_real_images(tmp_path):
    """A few real slices per class (from ../shared, linked into tmp, never copied into the repo)."""
    root = tmp_path / "real"
    for folder, count in (("Bengin cases", 12), ("Malignant cases", 12)):
        (root / folder).mkdir(parents=True)
        for path in sorted((SHARED_DATA / folder).glob("*.jpg"))[:count]:
            (root / folder / path.name).symlink_to(path)
    shutil.copy(SHARED_DATA / "groups.csv", root / "groups.csv")
    cfg = make_cfg(tmp_path / "run", ["experiment=iqothnccd", *tiny_overrides(root), "data.grouped=false",
                                      "trainer.max_epochs=1", "callbacks.finetune.stage1_epochs=1"])
    result = train(cfg)
    assert result["split"]["test"] > 0 and 0 <= result["test"]["accuracy"] <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_smoke(tiny_root, tmp_path):
    cfg = make_cfg(tmp_path, ["trainer=gpu", *tiny_overrides(tiny_root), "trainer.fast_dev_run=true"])
    assert "roc_auc" in train(cfg)["test"]


def test_same_seed_gives_the_same_metrics(tiny_root, tmp_path):
    runs = [train(make_cfg(tmp_path / str(i), [*tiny_overrides(tiny_root), "seed=7"])) for i in range(2)]
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["val"] == runs[1]["val"]
    assert (tmp_path / "0" / "split.csv").read_text() == (tmp_path / "1" / "split.csv").read_text()


def test_a_code_carrying_resume_checkpoint_is_refused_before_any_work(tiny_root, tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"lungcnn": Exploit(), "state_dict": {}}, evil, pickle_module=pickle)
    cfg = make_cfg(tmp_path / "run", [*tiny_overrides(tiny_root), f"ckpt_path={evil}"])
    with pytest.raises(LungCNNInputError, match="refused"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run" / "split.csv").exists()
