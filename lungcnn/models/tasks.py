"""The task is a setting: how many outputs, which loss, how logits become probabilities, which metrics.

`binary`: one logit, BCE-with-logits, P(positive) = sigmoid(logit / T); the positive class is the
last of `class_names` (malignant). `multiclass`: K logits, cross-entropy, softmax(logits / T).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchmetrics
from torch import nn
from torchmetrics import classification as tmc

from lungcnn.errors import LungCNNInputError


@dataclass(frozen=True)
class Task:
    name: str
    outputs: Callable[[int], int]
    make_loss: Callable[[int, float | None, list[float] | None], nn.Module]
    probabilities: Callable[[torch.Tensor, float], torch.Tensor]
    make_metrics: Callable[[int], torchmetrics.MetricCollection]
    targets: Callable[[torch.Tensor], torch.Tensor]


def _binary_metrics(num_classes: int) -> torchmetrics.MetricCollection:
    return torchmetrics.MetricCollection({
        "accuracy": tmc.BinaryAccuracy(),
        "precision": tmc.BinaryPrecision(),
        "sensitivity": tmc.BinaryRecall(),
        "specificity": tmc.BinarySpecificity(),
        "f1": tmc.BinaryF1Score(),
        "roc_auc": tmc.BinaryAUROC(),
    })


def _multiclass_metrics(num_classes: int) -> torchmetrics.MetricCollection:
    k = num_classes
    return torchmetrics.MetricCollection({
        "accuracy": tmc.MulticlassAccuracy(k, average="micro"),
        "balanced_accuracy": tmc.MulticlassAccuracy(k, average="macro"),
        "f1": tmc.MulticlassF1Score(k, average="macro"),
        "roc_auc": tmc.MulticlassAUROC(k, average="macro"),
    })


def _bce(num_classes: int, pos_weight: float | None, class_weights: list[float] | None) -> nn.Module:
    return nn.BCEWithLogitsLoss(pos_weight=None if pos_weight is None else torch.tensor(pos_weight))


def _cross_entropy(num_classes: int, pos_weight: float | None, class_weights: list[float] | None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=None if class_weights is None else torch.tensor(class_weights))


TASKS: dict[str, Task] = {
    "binary": Task(
        name="binary",
        outputs=lambda k: 1,
        make_loss=_bce,
        probabilities=lambda logits, t: torch.sigmoid(logits / t),
        make_metrics=_binary_metrics,
        targets=lambda y: y.float(),
    ),
    "multiclass": Task(
        name="multiclass",
        outputs=lambda k: k,
        make_loss=_cross_entropy,
        probabilities=lambda logits, t: torch.softmax(logits / t, dim=-1),
        make_metrics=_multiclass_metrics,
        targets=lambda y: y.long(),
    ),
}


def get_task(name: str, num_classes: int) -> Task:
    if name not in TASKS:
        raise LungCNNInputError(f"model.task must be one of {sorted(TASKS)}, got {name!r}")
    if name == "binary" and num_classes != 2:
        raise LungCNNInputError(f"model.task=binary needs 2 classes, data.class_names has {num_classes}")
    if name == "multiclass" and num_classes < 2:
        raise LungCNNInputError("model.task=multiclass needs at least 2 classes")
    return TASKS[name]
