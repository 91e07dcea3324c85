"""`lungcnn.training.config_check.validate`: every bad value is refused before any work, in one line naming its key."""

from __future__ import annotations

import logging

import pytest

from lungcnn.errors import LungCNNInputError
from lungcnn.training.config_check import validate

from .conftest import CONF, make_cfg, tiny_overrides

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _cfg(root, tmp_path, *overrides: str):
    return make_cfg(tmp_path / "run", [f"data.root={root}", "data.synthetic=false", *overrides])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_validates(experiment, root, tmp_path):
    validate(_cfg(root, tmp_path, f"experiment={experiment}", f"data.root={root}"))


def test_the_demo_needs_no_data_folder(tmp_path):
    validate(make_cfg(tmp_path, ["experiment=demo", f"data.root={tmp_path / 'not-made-yet'}"]))


BAD = [
    ("data.image_size=16", "data.image_size"),
    ("data.image_size=abc", "data.image_size"),
    ("data.image_size=64.5", "data.image_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.test_fraction=-0.1", "data.test_fraction"),
    ("data.test_fraction=nan", "data.test_fraction"),
    ("data.val_fraction=0.5 data.test_fraction=0.5", "data.val_fraction + data.test_fraction"),
    ("data.n_folds=1 data.fold=0", "data.n_folds"),
    ("data.n_folds=5 data.fold=5", "data.fold"),
    ("data.n_folds=5", "data.fold"),
    ("data.fold=2", "data.fold"),
    ("data.normal_as=ignore", "data.normal_as"),
    ("data.normal_as=class", "data.normal_as"),
    ("data.imbalance=oversample", "data.imbalance"),
    ("data.crop=brain", "data.crop"),
    ("data.class_names=[]", "data.class_names"),
    ("data.class_names=[benign,benign]", "data.class_names"),
    ("data.class_names=[benign,'']", "data.class_names"),
    ("data.window.width=-1500", "data.window.width"),
    ("data.std=[0.2,0,0.2]", "data.std"),
    ("data.mean=[0.5]", "data.mean"),
    ("model.task=regression", "model.task"),
    ("model.task=binary data.class_names=[a,b,c]", "model.task"),
    ("model.backbone=mobilenet_v9", "model.backbone"),
    ("model.pretrained=yes", "model.pretrained"),
    ("model.weights_file=/no/weights.pth", "model.weights_file"),
    ("model.head_lr=0", "model.head_lr"),
    ("model.head_lr=-1e-3", "model.head_lr"),
    ("model.weight_decay=-1", "model.weight_decay"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.hidden=-1", "model.hidden"),
    ("model.features=last", "model.features"),
    ("model.features=blocks model.backbone=resnet18", "model.features"),
    ("model.standardize=maybe", "model.standardize"),
    ("callbacks.finetune.stage1_epochs=-1", "callbacks.finetune.stage1_epochs"),
    ("callbacks.finetune.stage1_epochs=20 trainer.max_epochs=10", "callbacks.finetune.stage1_epochs"),
    ("callbacks.finetune.unfreeze_top_n=-3", "callbacks.finetune.unfreeze_top_n"),
    ("callbacks.finetune.finetune_lr=0", "callbacks.finetune.finetune_lr"),
    ("callbacks.finetune.lr_divisor=0", "callbacks.finetune.lr_divisor"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
]


@pytest.mark.parametrize("overrides, key", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_naming_its_key(overrides, key, root, tmp_path):
    cfg = _cfg(root, tmp_path, *overrides.split())
    with pytest.raises(LungCNNInputError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert message.startswith(key) or f" {key}" in message, message
    assert "\n" not in message


def test_unset_data_root_is_named(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=iqothnccd"])  # data.root: ???
    with pytest.raises(LungCNNInputError, match=r"data\.root is not set"):
        validate(cfg)


def test_stage_two_that_never_starts_is_only_a_warning(root, tmp_path, caplog):
    cfg = _cfg(root, tmp_path, "trainer.max_epochs=3", "callbacks.finetune.stage1_epochs=3")
    with caplog.at_level(logging.WARNING, logger="lungcnn.training.config_check"):
        validate(cfg)
    assert "never starts" in caplog.text


# Checked by train() itself (the run's own keys) or by the function that reads the path, still before any
# image is decoded or anything is written.
REFUSED_BY_TRAIN = [
    ("model.backbone=nope", "model.backbone"),
    ("data.root=/no/such/folder", "data.root"),
    ("data.split_file=/no/split.csv", "data.split_file"),
    ("seed=1.5", "seed"),
    ("seed=abc", "seed"),
    ("test=maybe", "test"),
    ("resume=1", "resume"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path"),
]


@pytest.mark.parametrize("overrides, key", REFUSED_BY_TRAIN, ids=[b[0] for b in REFUSED_BY_TRAIN])
def test_train_refuses_a_bad_value_before_any_work(overrides, key, tiny_root, tmp_path):
    from lungcnn.training.train import train

    cfg = make_cfg(tmp_path / "run", [*tiny_overrides(tiny_root), *overrides.split()])
    with pytest.raises(LungCNNInputError) as caught:
        train(cfg)
    message = str(caught.value)
    assert message.startswith(key) or f" {key}" in message, message
    assert "\n" not in message
    assert not (tmp_path / "run").exists()  # nothing written: no split.csv, no checkpoints


def _owner_calls():
    import pandas as pd

    from lungcnn.data.catalog import scan_folder
    from lungcnn.data.datamodule import LungCTDataModule
    from lungcnn.data.io import LungWindow
    from lungcnn.data.splits import assign_splits
    from lungcnn.data.transforms import build_transform, load_for_model
    from lungcnn.models.backbone import create_backbone
    from lungcnn.models.module import LungClassifier
    from lungcnn.models.net import ClassifierHead
    from lungcnn.training.callbacks.finetune import TwoStageFinetune

    frame = pd.DataFrame({"label": [0, 1], "group": ["a", "b"]})
    folders, names = {"benign": "benign", "malignant": "malignant"}, ["benign", "malignant"]

    def dm(**kwargs):
        return lambda: LungCTDataModule("/no/such/folder", folders, names, **kwargs)

    return [
        (lambda: load_for_model(b"", 16, LungWindow()), "data.image_size"),
        (lambda: load_for_model(b"", 64, LungWindow(), crop="brain"), "data.crop"),
        (lambda: build_transform([0.5], [0.2, 0.2, 0.2]), "data.mean"),
        (lambda: build_transform([0.5] * 3, [0.2, 0, 0.2]), "data.std"),
        (lambda: LungWindow(width=-1), "data.window.width"),
        (lambda: LungWindow(level=float("nan")), "data.window.level"),
        (lambda: scan_folder("/no/such/folder", folders, ["benign"]), "data.class_names"),
        (lambda: scan_folder("/no/such/folder", {}, names), "data.class_folders"),
        (lambda: scan_folder("/no/such/folder", folders, names, "class"), "data.normal_as"),
        (lambda: assign_splits(frame, val_fraction=0.5, test_fraction=0.5), "data.val_fraction + data.test_fraction"),
        (lambda: assign_splits(frame, n_folds=1, fold=0), "data.n_folds"),
        (lambda: assign_splits(frame, fold=1), "data.fold"),
        (lambda: assign_splits(frame, grouped="yes"), "data.grouped"),
        (dm(batch_size=0), "data.batch_size"),
        (dm(num_workers=-1), "data.num_workers"),
        (dm(imbalance="oversample"), "data.imbalance"),
        (dm(synthetic="yes"), "data.synthetic"),
        (dm(crop="brain"), "data.crop"),
        (dm(n_folds=5, fold=5), "data.fold"),
        (lambda: create_backbone("mobilenetv2_100", "yes"), "model.pretrained"),
        (lambda: create_backbone("mobilenetv2_100", "none", "/no/weights.pth"), "model.weights_file"),
        (lambda: ClassifierHead(8, hidden=-1), "model.hidden"),
        (lambda: ClassifierHead(8, dropout=1.0), "model.dropout"),
        (lambda: LungClassifier(names, head_lr=0), "model.head_lr"),
        (lambda: LungClassifier(names, weight_decay=-1), "model.weight_decay"),
        (lambda: TwoStageFinetune(stage1_epochs=-1), "callbacks.finetune.stage1_epochs"),
        (lambda: TwoStageFinetune(finetune_lr=0), "callbacks.finetune.finetune_lr"),
        (lambda: TwoStageFinetune(lr_divisor=0), "callbacks.finetune.lr_divisor"),
        (lambda: TwoStageFinetune(train_bn_stats="no"), "callbacks.finetune.train_bn_stats"),
    ]


OWNER_CASES = _owner_calls()


@pytest.mark.parametrize("call, key", OWNER_CASES, ids=[key for _, key in OWNER_CASES])
def test_each_owner_checks_its_own_arguments(call, key):
    """The same rules hold when an owner is used directly, without a config (a script, the app, a test)."""
    with pytest.raises(LungCNNInputError) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(key), message
    assert "\n" not in message
