"""Check a training config before any work starts (`lungcnn.train` calls `validate` first).

Each value is checked once, by its owner: the class or function that uses it checks it on construction
(`LungCTDataModule` and the functions it hands its settings to, `TwoStageFinetune`, `check_backbone`,
...). `validate` builds the owners that are cheap to build and calls the checks of those that are not
(the model: it needs the decoded training split), so a bad value stops the run in one line naming its
key before an image is read. What stays here is what no single owner can see: settings that span
owners (model.task vs data.class_names, the fine-tuning schedule vs trainer.max_epochs) and a
mandatory value left unset (``???``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lungcnn.errors import LungCNNInputError, input_error_in, require_int

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Raise `LungCNNInputError` naming the first bad value in a training config; return None if all are fine."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise LungCNNInputError(f"{missing[0]} is not set: pass {missing[0]}=...")
    datamodule = _build(cfg.data)  # data.*: checked by the data module's constructor; reads no file
    _check_model(cfg, datamodule.class_names)
    _check_schedule(cfg)


def _build(node: DictConfig) -> Any:
    """instantiate `node`, re-raising its owner's one-line LungCNNInputError rather than Hydra's wrapper."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        cause = input_error_in(e)
        if cause is None:
            raise
        raise cause from None


def _check_model(cfg: DictConfig, class_names: list[str]) -> None:
    from lungcnn.models.backbone import check_backbone
    from lungcnn.models.module import LungClassifier, check_optimizer
    from lungcnn.models.net import check_head
    from lungcnn.task import make_task

    defaults = {k: p.default for k, p in inspect.signature(LungClassifier).parameters.items()}
    model = {**defaults, **OmegaConf.to_container(cfg.model, resolve=True)}
    if model["task"] == "binary" and len(class_names) != 2:
        raise LungCNNInputError(f"model.task=binary needs exactly 2 data.class_names, got {len(class_names)}; "
                                "use model.task=multiclass")
    make_task(model["task"], class_names)
    check_backbone(model["backbone"], model["pretrained"], model["weights_file"], model["features"])
    check_head(model["hidden"], model["dropout"], model["standardize"])
    check_optimizer(model["head_lr"], model["weight_decay"])


def _check_schedule(cfg: DictConfig) -> None:
    # trainer.max_epochs belongs to Lightning's Trainer, which takes 0 or -1 (no limit); lungcnn needs >= 1.
    max_epochs = require_int("trainer.max_epochs", OmegaConf.select(cfg, "trainer.max_epochs"), 1)
    if OmegaConf.select(cfg, "callbacks.finetune") is None:
        return
    stage1 = _build(cfg.callbacks.finetune).stage1_epochs  # its constructor checks callbacks.finetune.*
    if stage1 > max_epochs:
        raise LungCNNInputError(f"callbacks.finetune.stage1_epochs must be <= trainer.max_epochs ({max_epochs}), got {stage1}")
    if stage1 == max_epochs:
        log.warning("callbacks.finetune.stage1_epochs = trainer.max_epochs = %d: stage 2 (fine-tuning the backbone) "
                    "never starts", max_epochs)
