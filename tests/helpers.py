"""Test-only Lightning callbacks that crash a training run the hard way (SIGKILL: no cleanup, no finally).

Passed on the command line, e.g. `+callbacks.killer._target_=tests.helpers.KillAfterEpoch +callbacks.killer.epoch=1`.
"""

from __future__ import annotations

import os
import signal

import lightning as L


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterEpoch(L.Callback):
    """SIGKILL at the start of epoch `epoch + 1`, i.e. after epoch `epoch`'s checkpoints are on disk.

    (ModelCheckpoint always runs after other callbacks at an epoch's end, so the next epoch's start is the
    first hook that is sure to see them written.)
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch + 1:
            _die()


class KillMidEpoch(L.Callback):
    """SIGKILL after training batch `batch` of epoch `epoch`: weights have moved past the last checkpoint."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            _die()
