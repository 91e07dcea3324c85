"""The task: the one owner of what the network's outputs mean.

A task knows its classes, how many outputs the network has, the training loss and metrics, how logits
become probabilities (one definition, used by PyTorch, by numpy through PyTorch, and inside the ONNX
graph), how probabilities become a decision, and what one prediction looks like per class. Code elsewhere
asks the task; it does not branch on the task's name.

- `binary`: one logit; P(positive) = sigmoid((logit + shift) / T); the positive class is the last of
  `class_names` (malignant); decision: P(positive) >= threshold.
- `multiclass`: K logits; softmax((logits + shift) / T); decision: argmax of P(k) * w_k (w = 1: the most
  probable class; w = 1 / prior: balanced decisions).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lungcnn.errors import LungCNNInputError

if TYPE_CHECKING:  # torch is imported by the training and PyTorch paths only: onnxruntime needs none of it
    import torch
    from torch import nn


def is_tensor(x: Any) -> bool:
    """Whether `x` is a torch tensor, without importing torch (if torch is not loaded, nothing is a tensor)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(x, torch_module.Tensor)


@dataclass(frozen=True)
class Task:
    """Base of the task registry; a task is bound to its ordered class names.

    Args:
        class_names: class names in label order (label k is `class_names[k]`).
    """

    class_names: tuple[str, ...]
    name: ClassVar[str] = ""
    thresholded: ClassVar[bool] = False  # decided by one probability against a threshold
    min_classes: ClassVar[int] = 2
    max_classes: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        names = tuple(self.class_names)
        object.__setattr__(self, "class_names", names)
        k = len(names)
        if k < self.min_classes or (self.max_classes is not None and k > self.max_classes):
            wanted = self.min_classes if self.max_classes == self.min_classes else f"at least {self.min_classes}"
            raise LungCNNInputError(f"model.task={self.name} needs {wanted} classes, got {k}: {list(names)}")
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != k:
            raise LungCNNInputError(f"class names must be distinct non-empty strings, got {list(names)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- training -----------------------------------------------------------------------------------------
    @property
    def outputs(self) -> int:
        """Width of the network's last layer."""
        raise NotImplementedError

    def make_loss(self, pos_weight: float | None = None, class_weights: Sequence[float] | None = None) -> nn.Module:
        raise NotImplementedError

    def make_metrics(self):
        """A torchmetrics MetricCollection over (probabilities, labels)."""
        raise NotImplementedError

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Integer labels -> what the loss expects."""
        raise NotImplementedError

    # -- probabilities ------------------------------------------------------------------------------------
    def activation(self, z: Any) -> Any:
        """The output activation of a torch tensor (traced into ONNX) or a float64 numpy array."""
        raise NotImplementedError

    def probabilities(self, logits: Any, shift: float | Sequence[float] = 0.0, temperature: float = 1.0) -> Any:
        """Logits -> probabilities: activation((logits + shift) / T); the task's one definition.

        Args:
            logits: (N,) binary or (N, K), a torch tensor (autograd and ONNX export go through) or a numpy
                array (computed in float64 with numpy, so onnxruntime's hosts need no torch).
            shift: the prior correction added before the temperature (a number, or one per class).
            temperature: T > 0.

        Returns:
            binary: P(positive) (N,); K classes: (N, K) rows summing to 1; of the input's kind.
        """
        if is_tensor(logits):
            import torch

            shift_t = torch.as_tensor(shift, dtype=logits.dtype, device=logits.device)
            return self.activation((logits + shift_t) / temperature)
        z = np.asarray(logits, dtype=np.float64)
        return self.activation((z + np.asarray(shift, dtype=np.float64)) / float(temperature))

    def class_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """`probabilities`' output -> (N, K): one column per class, in `class_names` order."""
        raise NotImplementedError

    def empty_logits(self) -> np.ndarray:
        """Logits of no image, shaped as the network gives them."""
        return np.zeros((0,) if self.outputs == 1 else (0, self.outputs), np.float32)

    # -- decisions ----------------------------------------------------------------------------------------
    def decide(self, probs: np.ndarray, rule: Any) -> np.ndarray:
        """Calibrated probabilities -> (N,) class indices under `rule` (a `lungcnn.spec.DecisionRule`)."""
        raise NotImplementedError

    def logit_target(self, class_name: str) -> tuple[int, float]:
        """(output column, sign) whose gradient is evidence for `class_name` (Grad-CAM)."""
        raise NotImplementedError


def _binary_metrics():
    import torchmetrics
    from torchmetrics import classification as tmc

    return torchmetrics.MetricCollection({
        "accuracy": tmc.BinaryAccuracy(),
        "precision": tmc.BinaryPrecision(),
        "sensitivity": tmc.BinaryRecall(),
        "specificity": tmc.BinarySpecificity(),
        "f1": tmc.BinaryF1Score(),
        "roc_auc": tmc.BinaryAUROC(),
    })


def _multiclass_metrics(k: int):
    import torchmetrics
    from torchmetrics import classification as tmc

    return torchmetrics.MetricCollection({
        "accuracy": tmc.MulticlassAccuracy(k, average="micro"),
        "balanced_accuracy": tmc.MulticlassAccuracy(k, average="macro"),
        "f1": tmc.MulticlassF1Score(k, average="macro"),
        "roc_auc": tmc.MulticlassAUROC(k, average="macro"),
    })


@dataclass(frozen=True)
class BinaryTask(Task):
    name: ClassVar[str] = "binary"
    thresholded: ClassVar[bool] = True
    max_classes: ClassVar[int | None] = 2

    @property
    def outputs(self) -> int:
        return 1

    @property
    def positive(self) -> str:
        return self.class_names[1]

    def make_loss(self, pos_weight: float | None = None, class_weights: Sequence[float] | None = None) -> nn.Module:
        import torch

        return torch.nn.BCEWithLogitsLoss(pos_weight=None if pos_weight is None else torch.tensor(pos_weight))

    def make_metrics(self):
        return _binary_metrics()

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.float()

    def activation(self, z: Any) -> Any:
        if is_tensor(z):
            return z.sigmoid()
        return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow for large |z|

    def class_probabilities(self, probs: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        return np.stack([1.0 - p, p], axis=-1)

    def decide(self, probs: np.ndarray, rule: Any) -> np.ndarray:
        return (np.asarray(probs, dtype=np.float64) >= rule.threshold).astype(np.int64)

    def logit_target(self, class_name: str) -> tuple[int, float]:
        return 0, 1.0 if class_name == self.positive else -1.0


@dataclass(frozen=True)
class MulticlassTask(Task):
    name: ClassVar[str] = "multiclass"

    @property
    def outputs(self) -> int:
        return self.num_classes

    def make_loss(self, pos_weight: float | None = None, class_weights: Sequence[float] | None = None) -> nn.Module:
        import torch

        return torch.nn.CrossEntropyLoss(weight=None if class_weights is None else torch.tensor(class_weights))

    def make_metrics(self):
        return _multiclass_metrics(self.num_classes)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        return y.long()

    def activation(self, z: Any) -> Any:
        if is_tensor(z):
            return z.softmax(dim=-1)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def class_probabilities(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs, dtype=np.float64)

    def decide(self, probs: np.ndarray, rule: Any) -> np.ndarray:
        """Cancer first when `rule.priority` names a class: that class whenever its probability reaches
        `rule.threshold`, else the best of the others by P(k) * w_k (w = 1: the most probable)."""
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.num_classes:
            raise ValueError(f"expected (N, {self.num_classes}) probabilities, got shape {p.shape}")
        scores = p * (1.0 if rule.weights is None else np.asarray(rule.weights, dtype=np.float64))
        if rule.priority is None:
            return scores.argmax(axis=1)
        k = self.class_names.index(rule.priority)
        others = scores.copy()
        others[:, k] = -np.inf
        return np.where(p[:, k] >= rule.threshold, k, others.argmax(axis=1))

    def logit_target(self, class_name: str) -> tuple[int, float]:
        return self.class_names.index(class_name), 1.0


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (BinaryTask, MulticlassTask)}


def make_task(name: str, class_names: Sequence[str]) -> Task:
    """The task `name` (model.task) over `class_names`; a clear error for an unknown name or a wrong class count."""
    if name not in TASKS:
        raise LungCNNInputError(f"model.task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](tuple(class_names))
