"""Check every user-settable training value before any work starts (`lungcnn.train` calls `validate` first).

Hydra's struct mode already rejects unknown keys; this catches bad *values* (a typo'd backbone, a
fraction of 1.5, a missing weights file) in one line naming the key, instead of a traceback after the
images were decoded, or silently odd training.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lungcnn.errors import LungCNNInputError

log = logging.getLogger(__name__)

_ABSENT = object()


def validate(cfg: DictConfig) -> None:
    """Raise `LungCNNInputError` naming the first bad value in a training config; return None if all are fine."""
    _check_run(cfg)
    _check_data(cfg)
    _check_model(cfg)
    _check_schedule(cfg)


def _get(cfg: DictConfig, key: str, default: Any = _ABSENT) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise LungCNNInputError(f"{key} is not set: pass {key}=...") from None
    if value is _ABSENT:
        if default is _ABSENT:
            raise LungCNNInputError(f"{key} is missing from the config")
        return default
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _fail(key: str, expected: str, value: Any) -> None:
    raise LungCNNInputError(f"{key} must be {expected}, got {value!r}")


def _int(cfg: DictConfig, key: str, minimum: int, optional: bool = False) -> int | None:
    value = _get(cfg, key, None if optional else _ABSENT)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, f"an integer >= {minimum}" + (" or null" if optional else ""), value)
    return value


def _number(cfg: DictConfig, key: str, low: float, high: float | None, *, low_open: bool, high_open: bool = True,
            optional: bool = False) -> float | None:
    value = _get(cfg, key, None if optional else _ABSENT)
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # NaN fails
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or (value < high if high_open else value <= high))
    if not ok:
        closing = ")" if high_open or high is None else "]"
        interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}{closing}"
        _fail(key, f"a number in {interval}" + (" or null" if optional else ""), value)
    return float(value)


def _choice(cfg: DictConfig, key: str, choices: Sequence[str]) -> str:
    value = _get(cfg, key)
    if value not in choices:
        _fail(key, f"one of {list(choices)}", value)
    return value


def _existing_file(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key, None)
    if value is not None and not Path(str(value)).is_file():
        raise LungCNNInputError(f"{key}: file not found: {value}")


def _bool(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key, False)
    if not isinstance(value, bool):
        _fail(key, "true or false", value)


def _check_run(cfg: DictConfig) -> None:
    seed = _get(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail("seed", "an integer", seed)
    _bool(cfg, "test")
    _bool(cfg, "resume")
    ckpt_path = _get(cfg, "ckpt_path", None)
    if ckpt_path is not None and str(ckpt_path) not in ("last", "hpc") and not Path(str(ckpt_path)).is_file():
        raise LungCNNInputError(f"ckpt_path: checkpoint not found: {ckpt_path} (or pass ckpt_path=last / resume=true)")


def _check_data(cfg: DictConfig) -> None:
    from lungcnn.data.catalog import NORMAL, NORMAL_AS
    from lungcnn.data.datamodule import IMBALANCE
    from lungcnn.data.transforms import CROPS, MIN_IMAGE_SIZE

    synthetic = _get(cfg, "data.synthetic", False)
    if not isinstance(synthetic, (bool, Mapping)):
        _fail("data.synthetic", "true, false or a mapping of make_synthetic_dataset arguments", synthetic)
    root = _get(cfg, "data.root")
    if not synthetic and not Path(str(root)).is_dir():
        raise LungCNNInputError(f"data.root: data folder not found: {root} (set data.root=/path/to/data)")
    _int(cfg, "data.image_size", MIN_IMAGE_SIZE)
    _int(cfg, "data.batch_size", 1)
    _int(cfg, "data.num_workers", 0)
    n_folds = _int(cfg, "data.n_folds", 2, optional=True)
    fold = _get(cfg, "data.fold", None)
    if n_folds is None and fold is not None:
        raise LungCNNInputError(f"data.fold={fold!r} needs data.n_folds (cross-validation); set both or neither")
    if n_folds is not None and (isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n_folds):
        _fail("data.fold", f"an integer in 0..{n_folds - 1} when data.n_folds={n_folds}", fold)
    val = _number(cfg, "data.val_fraction", 0, 1, low_open=True)
    test = _number(cfg, "data.test_fraction", 0, 1, low_open=True)
    held_out = 1 / n_folds if n_folds else test
    if val + held_out >= 1:
        raise LungCNNInputError(f"data.val_fraction + data.test_fraction must be < 1 to leave training images, got "
                                f"{val} + {held_out:g}" + (f" (1/data.n_folds={n_folds})" if n_folds else ""))
    _bool(cfg, "data.grouped")
    names = _get(cfg, "data.class_names")
    if (not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        _fail("data.class_names", "a list of at least 2 unique, non-empty names", names)
    folders = _get(cfg, "data.class_folders")
    if not isinstance(folders, Mapping) or not folders or not all(isinstance(v, str) and v for v in folders.values()):
        _fail("data.class_folders", "a non-empty mapping folder name -> class name", folders)
    normal_as = _choice(cfg, "data.normal_as", NORMAL_AS)
    if normal_as == "class" and NORMAL not in names:
        raise LungCNNInputError(f"data.normal_as=class needs {NORMAL!r} in data.class_names, got {names}")
    _choice(cfg, "data.imbalance", IMBALANCE)
    _choice(cfg, "data.crop", sorted(CROPS))
    _existing_file(cfg, "data.split_file")
    if _get(cfg, "data.window", None) is not None:
        _number(cfg, "data.window.level", -1e5, None, low_open=False)
        _number(cfg, "data.window.width", 0, None, low_open=True)
    for key in ("data.mean", "data.std"):
        value = _get(cfg, key, None)
        if value is not None and (not isinstance(value, list) or len(value) != 3
                                  or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
                                  or (key == "data.std" and not all(v > 0 for v in value))):
            _fail(key, "null or three numbers" + (" > 0" if key == "data.std" else ""), value)


def _check_model(cfg: DictConfig) -> None:
    import timm

    from lungcnn.models.backbone import PRETRAINED
    from lungcnn.task import TASKS

    task = _choice(cfg, "model.task", sorted(TASKS))
    n_classes = len(_get(cfg, "data.class_names"))
    if task == "binary" and n_classes != 2:
        raise LungCNNInputError(f"model.task=binary needs exactly 2 data.class_names, got {n_classes}; "
                                "use model.task=multiclass")
    backbone = _get(cfg, "model.backbone")
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        _fail("model.backbone", "a timm model name (see timm.list_models())", backbone)
    _choice(cfg, "model.pretrained", PRETRAINED)
    _existing_file(cfg, "model.weights_file")
    _int(cfg, "model.hidden", 1)
    _number(cfg, "model.dropout", 0, 1, low_open=False)
    _number(cfg, "model.head_lr", 0, None, low_open=True)
    _number(cfg, "model.weight_decay", 0, None, low_open=False)


def _check_schedule(cfg: DictConfig) -> None:
    max_epochs = _int(cfg, "trainer.max_epochs", 1)
    if _get(cfg, "callbacks.finetune", None) is None:
        return
    stage1 = _int(cfg, "callbacks.finetune.stage1_epochs", 0)
    if stage1 > max_epochs:
        raise LungCNNInputError(f"callbacks.finetune.stage1_epochs must be <= trainer.max_epochs ({max_epochs}), got {stage1}")
    if stage1 == max_epochs:
        log.warning("callbacks.finetune.stage1_epochs = trainer.max_epochs = %d: stage 2 (fine-tuning the backbone) "
                    "never starts", max_epochs)
    _int(cfg, "callbacks.finetune.unfreeze_top_n", 0)
    _number(cfg, "callbacks.finetune.finetune_lr", 0, None, low_open=True, optional=True)
    _number(cfg, "callbacks.finetune.lr_divisor", 0, None, low_open=True)
