"""Batch prediction under Lightning's `trainer.predict`: many GPUs or nodes through Lightning's strategies.

Imported only when `lungcnn-predict --devices/--strategy` asks for it (Lightning takes seconds to import).
Rank 0 gathers every rank's results and writes the CSV in lungcnn's prediction schema.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lungcnn.inference import schema
from lungcnn.inference.predictor import Prediction, Predictor, tta_logits
from lungcnn.inference.reading import Batch, batch_predictions, collate, progress_bar, read_item
from lungcnn.models.guard import guarded_forward


class ImageSources(Dataset):
    """Sources -> `reading.read_item` (the image or why it is unreadable), for Lightning's distributed samplers."""

    def __init__(self, sources: Sequence, predictor: Predictor) -> None:
        self.sources, self.predictor = list(sources), predictor

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        return read_item(self.predictor, self.sources, i)


def _collate(items: list) -> Batch:
    batch = collate(items)  # as tensors, so Lightning moves them to each device
    return Batch(torch.from_numpy(batch.index), torch.from_numpy(batch.images), batch.failed)


def make_loader(sources: Sequence, predictor: Predictor, batch_size: int, workers: int) -> DataLoader:
    """Sources (`lungcnn.data.series.Source`: files, zip members) decoded by DataLoader workers."""
    return DataLoader(ImageSources(sources, predictor), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_collate, prefetch_factor=4 if workers else None)


def run_lightning(predictor: Predictor, names: Sequence[str], loader: DataLoader, out: Path,
                   devices: int | str | None, strategy: str | None, num_nodes: int, progress: bool) -> dict[str, int] | None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep stdout for the summary
    module = PredictionModule(predictor, names, out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*predict returned None.*")  # on purpose: rows go to the CSV
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning vs torch 2.14 internals, not ours
        trainer = L.Trainer(accelerator="auto", devices=devices if devices is not None else "auto",
                            strategy=strategy or "auto", num_nodes=num_nodes, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False,
                            callbacks=[_ProgressBar(len(names), progress)])
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    return module.counts  # None in the launching process of a spawn strategy: rank 0 wrote the file there


class PredictionModule(L.LightningModule):
    """trainer.predict wrapper: Lightning puts the net on each device; results are gathered and rank 0 writes the CSV.

    Normalisation runs on the device from the Predictor's own table (uint8 crosses the bus, not float).
    """

    def __init__(self, predictor: Predictor, names: Sequence[str], out: Path) -> None:
        super().__init__()
        self.net = predictor.net
        self.guard = getattr(predictor.backend, "guard", None)  # the domain guard (a module: Lightning moves it)
        self.novelty = getattr(predictor.backend, "novelty", None)
        self.register_buffer("lut", torch.from_numpy(predictor.lut.T.copy()), persistent=False)  # (256, 3)
        self.predictor, self.names, self.out = predictor, list(names), out
        self.results: list[tuple[list[int], np.ndarray | None, list[tuple[int, str]], np.ndarray | None,
                                 np.ndarray | None, np.ndarray | None]] = []
        self.counts: dict[str, int] | None = None

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        logits = scores = lungs = novelty = None
        if len(batch.index):
            lungs = self.predictor.lungs(batch.images.cpu().numpy())
            x = self.lut[batch.images.long()].permute(0, 3, 1, 2)  # (n, S, S, 3) -> (n, 3, S, S)
            plain, scores, novelty = guarded_forward(self.net, self.guard, x, self.novelty)
            logits = tta_logits(self.net, x, self.predictor.tta, plain=plain).float().cpu().numpy()
            scores, novelty = (None if t is None else t.float().cpu().numpy() for t in (scores, novelty))
        self.results.append((batch.index.cpu().tolist(), logits, list(batch.failed), scores, lungs, novelty))

    def on_predict_epoch_end(self) -> None:
        parts = [self.results]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            parts = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, self.results)
        if not self.trainer.is_global_zero:
            return
        merged: dict[int, Prediction] = {}  # keyed by file: a DistributedSampler pads ranks with repeats
        for part in parts:
            for index, logits, failed, scores, lungs, novelty in part:
                merged.update(batch_predictions(self.predictor, self.names, index, logits, failed, scores, lungs, novelty))
        self.counts = schema.write_csv(self.out, self.predictor.task, [p for _, p in sorted(merged.items())])


class _ProgressBar(L.Callback):
    """tqdm on stderr for rank 0's share of the batches (Lightning's own bar writes to stdout)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar = progress_bar(-(-self.total // trainer.world_size), self.enabled and trainer.is_global_zero)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.bar.update(len(batch.index) + len(batch.failed))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar.close()


