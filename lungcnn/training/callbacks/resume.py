"""What makes a crashed run resumable, exactly: `python -m lungcnn.train ... hydra.run.dir=SAME resume=true`.

- `EpochSeed`: the global RNGs (dropout) are re-seeded from (seed, epoch) at every epoch start, so a
  resumed process draws what the uninterrupted one would have (the data side does the same in
  `LungCTDataModule`'s sampler).
- `LastEveryEpoch`: Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when a
  top-k checkpoint is saved, i.e. when the monitored metric improved; a crash would then resume from the
  last *improvement*, possibly many epochs back. This callback writes it at every epoch end instead.
- `resolve_ckpt_path`: ``resume=true`` is ``ckpt_path=last``; with nothing to resume it starts afresh
  (so a restart script may always pass it).
- `keep_csv_history`: Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts; on resume
  the pre-crash rows are moved aside instead of lost.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from lungcnn.seeding import derive_seed

log = logging.getLogger(__name__)


class EpochSeed(L.Callback):
    """Re-seed torch / numpy / random from (seed, epoch) at each training epoch start."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = derive_seed(self.seed, trainer.current_epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)


class LastEveryEpoch(Checkpoint):
    """Top up every ``ModelCheckpoint(save_last=True)``: write its last.ckpt at an epoch end where it saved nothing.

    A `Checkpoint` subclass, so Lightning runs it after the ModelCheckpoints it tops up (they must decide
    first whether this epoch improved). Uses ModelCheckpoint's own `_save_last_checkpoint`, so file names,
    version counters and the checkpoint's recorded `last_model_path` stay exactly Lightning's.
    """

    def __init__(self) -> None:
        self._warned = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last is True:
                self._top_up(trainer, callback)

    def _top_up(self, trainer: L.Trainer, callback: ModelCheckpoint) -> None:
        try:
            if not callback._should_skip_saving_checkpoint(trainer):  # skips when it saved at this step
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        except AttributeError as e:  # a Lightning version without these internals: degrade, do not crash
            if not self._warned:
                log.warning("cannot write last.ckpt every epoch on this Lightning version (%s); a resumed run "
                            "restarts from the last improved checkpoint", e)
                self._warned = True


def resume_callbacks(seed: int, configured: list[L.Callback]) -> list[L.Callback]:
    """The callbacks `lungcnn.train` appends after the configured ones (LastEveryEpoch only where it has work)."""
    saves_last = any(isinstance(c, ModelCheckpoint) and c.save_last is True for c in configured)
    return [EpochSeed(seed), *([LastEveryEpoch()] if saves_last else [])]


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path`` as given, or "last" when ``resume=true``; on resume, drop the temp file of a write cut short."""
    ckpt_path = str(cfg.ckpt_path) if cfg.get("ckpt_path") else ("last" if cfg.get("resume", False) else None)
    checkpoints = Path(cfg.run_dir) / "checkpoints"
    if ckpt_path is not None:
        for partial in checkpoints.glob(".*.ckpt.*.tmp"):  # atomic_open's temp file, left by a kill mid-write
            partial.unlink(missing_ok=True)
    if ckpt_path == "last":
        if (checkpoints / "last.ckpt").is_file():
            # Lightning's "last" means the newest last*.ckpt: a calibrated `last.calibrated.ckpt` next to it
            # (lungcnn's own format, not a training state) would be picked and fail.
            return str(checkpoints / "last.ckpt")
        log.warning("ckpt_path=last: no last.ckpt in %s; starting a new run there", checkpoints)
    return ckpt_path


@rank_zero_only
def keep_csv_history(loggers: list[Any], ckpt_path: str | None) -> None:
    """On resume, move each CSVLogger's existing metrics.csv to metrics.before-resume-N.csv (else Lightning deletes it)."""
    if ckpt_path is None:
        return
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            current = Path(logger.log_dir) / "metrics.csv"
            if current.is_file():
                n = 1 + sum(1 for _ in current.parent.glob("metrics.before-resume-*.csv"))
                current.rename(current.with_name(f"metrics.before-resume-{n}.csv"))
