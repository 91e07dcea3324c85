"""Two-stage fine-tuning as a Lightning callback.

Stage 1 (epochs < `stage1_epochs`): the whole backbone is frozen, its batch-norm layers in eval mode
(running statistics fixed), and only the new head trains at the module's `head_lr`.
Stage 2: the top `unfreeze_top_n` backbone layers are unfrozen and everything trainable continues at
`finetune_lr` (default head_lr / 10).

A "layer" here is one Conv2d, BatchNorm2d or Linear module of the backbone, counted back from the
output (timm's mobilenetv2_100 has 104: the top 30 reach from the end back into blocks.5.0, i.e. the
last four inverted-residual blocks plus conv_head/bn2). Frozen batch-norm layers stay in eval mode
in both stages. Unfrozen ones train their scale and shift but, by default (`train_bn_stats=False`),
keep their ImageNet running statistics, as Keras' fine-tuning recipe does: on a few hundred images,
batch statistics of small, class-balanced, augmented batches made validation collapse in stage 2.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from lungcnn.errors import require_bool, require_int, require_number
from lungcnn.models.backbone import conv_and_norm_layers

log = logging.getLogger(__name__)


class TwoStageFinetune(BaseFinetuning):
    def __init__(self, stage1_epochs: int = 3, unfreeze_top_n: int = 30, finetune_lr: float | None = None,
                 lr_divisor: float = 10.0, train_bn_stats: bool = False) -> None:
        super().__init__()
        require_int("callbacks.finetune.stage1_epochs", stage1_epochs, 0)
        require_int("callbacks.finetune.unfreeze_top_n", unfreeze_top_n, 0)
        require_number("callbacks.finetune.finetune_lr", finetune_lr, 0, None, low_open=True, optional=True)
        require_number("callbacks.finetune.lr_divisor", lr_divisor, 0, None, low_open=True)
        require_bool("callbacks.finetune.train_bn_stats", train_bn_stats)
        self.stage1_epochs, self.unfreeze_top_n = stage1_epochs, unfreeze_top_n
        self.finetune_lr, self.lr_divisor, self.train_bn_stats = finetune_lr, lr_divisor, train_bn_stats

    @staticmethod
    def top_layers(backbone: nn.Module, n: int) -> list[nn.Module]:
        layers = conv_and_norm_layers(backbone)
        return layers[len(layers) - min(n, len(layers)):]

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        backbone = pl_module.net.backbone
        self.freeze(backbone, train_bn=False)
        # Lightning's freeze switches frozen batch norm to batch statistics; we want fixed running stats.
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.track_running_stats = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # on resume: puts stage 2's param groups back into the optimizer
        # ...but leaves the layers they hold frozen (freeze_before_training just ran): without this, a run
        # resumed in stage 2 would silently stop training the unfrozen backbone layers.
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.requires_grad_(True)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch != self.stage1_epochs:
            return
        lr = self.finetune_lr or pl_module.hparams.head_lr / self.lr_divisor
        for group in optimizer.param_groups:
            group["lr"] = lr
        layers = self.top_layers(pl_module.net.backbone, self.unfreeze_top_n)
        if layers:
            self.unfreeze_and_add_param_group(layers, optimizer, lr=lr, train_bn=True)
        log.info("stage 2 from epoch %d: unfroze the top %d backbone layers, lr %.2g", epoch, len(layers), lr)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        for module in pl_module.net.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train(self.train_bn_stats and any(p.requires_grad for p in module.parameters()))
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        stage = 1 if trainer.current_epoch < self.stage1_epochs else 2
        pl_module.log_dict({"finetune/stage": float(stage), "finetune/trainable_params": float(trainable)},
                           on_epoch=True, on_step=False)
        if trainer.is_global_zero:
            log.info("epoch %d: stage %d, %s trainable parameters", trainer.current_epoch, stage, f"{trainable:,}")
