"""LightningModule: LungNet + the task's loss and torchmetrics metrics, plus the checkpoint's metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from lungcnn.errors import LungCNNInputError, require_number
from lungcnn.models.net import LungNet
from lungcnn.spec import ModelSpec
from lungcnn.task import make_task


def check_optimizer(head_lr: float, weight_decay: float) -> None:
    """The optimizer's settings (model.head_lr, model.weight_decay); `LungClassifier` checks them on construction."""
    require_number("model.head_lr", head_lr, 0, None, low_open=True)
    require_number("model.weight_decay", weight_decay, 0, None, low_open=False)


class LungClassifier(L.LightningModule):
    """Hyperparameters are plain Python types only, so checkpoints load with `weights_only=True`."""

    def __init__(
        self,
        class_names: list[str],
        task: str = "binary",
        backbone: str = "mobilenetv2_100",
        pretrained: str = "imagenet",
        weights_file: str | None = None,
        features: str = "head",
        standardize: bool = False,
        hidden: int = 128,
        dropout: float = 0.2,
        head_lr: float = 1e-3,
        weight_decay: float = 1e-4,
        pos_weight: float | None = None,
        class_weights: list[float] | None = None,
        preprocessing: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        channels_last: bool = True,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        """`optimizer`: a partial optimizer (`model.optimizer`, Hydra `_partial_: true`) given the trainable
        parameters; None: AdamW at `head_lr` with `weight_decay`. The fine-tuning callback adds backbone layers to
        it in stage 2 at `head_lr / lr_divisor`. `standardize`: the head standardises the pooled features with
        the training split's statistics, fitted when training starts (`on_fit_start`)."""
        super().__init__()
        check_optimizer(head_lr, weight_decay)
        if optimizer is not None and not callable(optimizer):
            raise LungCNNInputError(f"model.optimizer must be a partial optimizer (_partial_: true), got {optimizer!r}")
        self.optimizer = optimizer
        self.save_hyperparameters(ignore=["optimizer"])  # a partial is code, not a plain type: weights_only refuses it
        self.task = make_task(task, class_names)
        self.net = LungNet(backbone, self.task.outputs, hidden, dropout, pretrained, weights_file, features, standardize)
        if channels_last:  # NHWC: about 1.6x faster training steps for depthwise convolutions on CPU
            self.net.to(memory_format=torch.channels_last)
        self.loss = self.task.make_loss(pos_weight, class_weights)
        self.val_metrics = self.task.make_metrics().clone(prefix="val/")
        self.test_metrics = self.task.make_metrics().clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S), or their pooled backbone features (N, F) from the feature cache (`lungcnn.features`)."""
        return self.net.logits_of(x if x.ndim == 2 else self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S) -> pooled backbone features (N, F)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net.backbone(x)

    def on_fit_start(self) -> None:
        scaler = self.net.head.standardize
        if scaler is None or bool(scaler.fitted):  # a resumed run keeps the statistics it started with
            return
        # The training split unaugmented, as images or as cached features (either data module).
        loader = self.trainer.datamodule.training_features_loader()
        backbone_mode = self.net.backbone.training
        self.net.backbone.eval()
        with torch.no_grad():
            features = torch.cat([x.to(self.device) if x.ndim == 2 else self.features(x.to(self.device)) for x, _ in loader])
        self.net.backbone.train(backbone_mode)
        scaler.fit(features)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), self.task.targets(y))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", self.loss(logits, self.task.targets(y)), prog_bar=stage == "val",
                 on_epoch=True, batch_size=len(y), sync_dist=True)
        metrics.update(self.task.probabilities(logits), y)
        self.log_dict(metrics, on_epoch=True, prog_bar=False, batch_size=len(y))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Only what is trainable now: the fine-tuning callback adds backbone layers in stage 2.
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer is not None:
            return self.optimizer(params)
        return torch.optim.AdamW(params, lr=self.hparams.head_lr, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        h = self.hparams
        spec = ModelSpec.for_training(h.task, h.class_names, h.backbone, h.hidden, h.dropout, h.preprocessing or {}, h.data,
                                      features=h.features, standardize=h.standardize)
        checkpoint["lungcnn"] = spec.to_metadata()
