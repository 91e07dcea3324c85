"""Batch prediction: `lungcnn-predict PATH... --ckpt CKPT [--out predictions.csv] [--backend auto|torch|onnx]`.

Files and folders (searched recursively; DICOM files without a known suffix are found by their
"DICM" marker) -> one CSV row per image: calibrated probability, decision at the checkpoint's
threshold, or the reason the file could not be read. DataLoader worker processes decode and
preprocess (`Predictor.load`, the same code as training) while the main process runs the model, so
decoding overlaps inference. The CSV is written through `atomic_open`: a failed or interrupted run
leaves the previous file untouched, never half a file. With `--devices`/`--strategy` the network runs
under Lightning's `trainer.predict`, so many GPUs or nodes use Lightning's strategies (DDP and the like).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lungcnn.cli import friendly_errors
from lungcnn.data.io import SUPPORTED_SUFFIXES
from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open
from lungcnn.inference.onnx_export import cpu_count
from lungcnn.inference.predictor import BACKENDS, Prediction, Predictor, tta_logits

log = logging.getLogger(__name__)


# -- inputs ------------------------------------------------------------------------------------------
def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Named files as given (any suffix: the reader says why one is unreadable), folders searched recursively.

    In folders: supported suffixes, plus DICOM files by their marker (series are often named without
    a suffix or with a UID); hidden files and folders (.DS_Store, ._x.jpg) are skipped. Duplicates dropped.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)) and _wanted(p))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LungCNNInputError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    if not unique:
        raise LungCNNInputError(f"no images found in {', '.join(map(str, paths))} "
                                f"(looked for {', '.join(sorted(SUPPORTED_SUFFIXES))} and DICOM files)")
    return unique


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _wanted(path: Path) -> bool:
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


class Item(NamedTuple):
    index: int
    image: np.ndarray | None  # (S, S) uint8, or None when unreadable
    error: str | None


class Batch(NamedTuple):
    """Readable images stacked for the model, plus the unreadable files' (index, reason)."""

    index: torch.Tensor  # (n,) int64, positions in the file list of `images`
    images: torch.Tensor  # (n, S, S) uint8
    failed: list[tuple[int, str]]


class ImageFiles(Dataset):
    """Files -> the Predictor's (S, S) uint8 image, or the reason the file could not be read (never raises)."""

    def __init__(self, files: Sequence[Path], predictor: Predictor) -> None:
        self.files, self.predictor = list(files), predictor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        try:
            return Item(i, self.predictor.load(self.files[i]), None)
        except LungCNNInputError as e:
            return Item(i, None, str(e))
        except Exception as e:  # a decoder bug on one odd file must not end a run over thousands
            return Item(i, None, f"{self.files[i]}: could not be read ({type(e).__name__}: {e})")


def collate(items: list[Item]) -> Batch:
    ok = [item for item in items if item.error is None]
    images = torch.from_numpy(np.stack([item.image for item in ok])) if ok else torch.zeros((0, 0, 0), dtype=torch.uint8)
    return Batch(torch.tensor([item.index for item in ok], dtype=torch.int64), images,
                 [(item.index, item.error) for item in items if item.error is not None])


@contextmanager
def single_threaded_opencv() -> Iterator[None]:
    """OpenCV single-threaded while the workers are forked and run, restored afterwards.

    Workers decode one image at a time, so OpenCV's thread pool would only fight the model for cores.
    It must be set in the parent before the fork: calling cv2.setNumThreads inside a forked worker
    deadlocks on the parent's pool (seen here with opencv 5.0).
    """
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def make_loader(files: Sequence[Path], predictor: Predictor, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(ImageFiles(files, predictor), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, prefetch_factor=4 if workers else None)


# -- output ------------------------------------------------------------------------------------------
def header(predictor: Predictor) -> list[str]:
    if predictor.binary:
        return ["file", "calibrated_probability", "decision", "uncalibrated_probability", "logit", "error"]
    return ["file", "calibrated_probability", "decision", *[f"probability_{c}" for c in predictor.class_names], "error"]


def row(predictor: Predictor, p: Prediction) -> list[Any]:
    width = len(header(predictor))
    if not p.ok:
        return [p.file, *[""] * (width - 2), p.error]
    if predictor.binary:
        return [p.file, p.calibrated, p.decision, p.probability, p.logit, ""]
    return [p.file, p.calibrated, p.decision, *[p.class_probabilities[c] for c in predictor.class_names], ""]


def batch_predictions(predictor: Predictor, files: Sequence[Path], index: Sequence[int], logits: np.ndarray,
                      failed: Sequence[tuple[int, str]]) -> list[tuple[int, Prediction]]:
    """One batch's results in file order: classified images and unreadable files interleaved."""
    done = list(zip(index, predictor.from_logits(logits, [str(files[i]) for i in index]))) if len(index) else []
    done += [(i, Prediction(str(files[i]), error=reason)) for i, reason in failed]
    return sorted(done, key=lambda pair: pair[0])


# -- running -----------------------------------------------------------------------------------------
def default_workers() -> int:
    """One decoding worker per two cores (at least one): decoding is a few times cheaper than the model."""
    return max(1, cpu_count() // 2)


def predict(paths: Sequence[str | Path], ckpt: str | Path, out: str | Path = "predictions.csv", backend: str = "auto",
            batch_size: int = 32, workers: int | None = None, devices: int | str | None = None,
            strategy: str | None = None, num_nodes: int = 1, progress: bool = True) -> dict[str, Any]:
    """Classify every image under `paths` and write `out` atomically; return counts and timings."""
    started = time.perf_counter()
    if batch_size < 1:
        raise LungCNNInputError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise LungCNNInputError(f"--workers must be >= 0, got {workers}")
    if backend not in BACKENDS:
        raise LungCNNInputError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    out = Path(out)
    if out.is_dir():
        raise LungCNNInputError(f"--out {out} is a folder; give a file name such as {out / 'predictions.csv'}")
    lightning = devices is not None or strategy is not None
    if lightning and backend == "onnx":
        raise LungCNNInputError("--devices/--strategy run the PyTorch network under Lightning; use --backend torch or auto")
    files = collect_files(paths)
    workers = default_workers() if workers is None else workers
    if lightning:
        predictor = Predictor.from_checkpoint(ckpt, "torch")
    else:
        predictor = Predictor.from_checkpoint(ckpt, backend, channels_last=True)
    loader = make_loader(files, predictor, batch_size, workers)
    ready = time.perf_counter()
    with single_threaded_opencv():
        if lightning:
            counts = _run_lightning(predictor, files, loader, out, devices, strategy, num_nodes, progress)
        else:
            counts = _run_plain(predictor, files, loader, out, progress)
    seconds = time.perf_counter() - ready
    summary = {"images": len(files), **(counts or {}), "out": str(out), "backend": "lightning" if lightning else
               predictor.backend.name, "workers": workers, "batch_size": batch_size,
               "startup_s": ready - started, "seconds": seconds, "images_per_s": len(files) / seconds if seconds else None}
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, mininterval=0.5, dynamic_ncols=True)


def _run_plain(predictor: Predictor, files: Sequence[Path], loader: DataLoader, out: Path, progress: bool) -> dict[str, int]:
    counts = {"classified": 0, "unreadable": 0}
    with atomic_open(out, "w", newline="", encoding="utf-8") as f, _progress(len(files), progress) as bar:
        writer = csv.writer(f)
        writer.writerow(header(predictor))
        for batch in loader:
            logits = predictor.logits(batch.images.numpy(), batch_size=max(len(batch.index), 1)) if len(batch.index) else None
            for _, p in batch_predictions(predictor, files, batch.index.tolist(), logits, batch.failed):
                writer.writerow(row(predictor, p))
            counts["classified"] += len(batch.index)
            counts["unreadable"] += len(batch.failed)
            bar.update(len(batch.index) + len(batch.failed))
    return counts


def write_csv(predictor: Predictor, results: Iterable[tuple[int, Prediction]], out: Path) -> dict[str, int]:
    counts = {"classified": 0, "unreadable": 0}
    with atomic_open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header(predictor))
        for _, p in results:
            writer.writerow(row(predictor, p))
            counts["classified" if p.ok else "unreadable"] += 1
    return counts


# -- Lightning -----------------------------------------------------------------------------------------
def _run_lightning(predictor: Predictor, files: Sequence[Path], loader: DataLoader, out: Path,
                   devices: int | str | None, strategy: str | None, num_nodes: int, progress: bool) -> dict[str, int] | None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep stdout for the summary
    module = PredictionModule(predictor, files, out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*predict returned None.*")  # on purpose: rows go to the CSV
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning vs torch 2.14 internals, not ours
        trainer = L.Trainer(accelerator="auto", devices=devices if devices is not None else "auto",
                            strategy=strategy or "auto", num_nodes=num_nodes, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False,
                            callbacks=[_ProgressBar(len(files), progress)])
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    return module.counts  # None in the launching process of a spawn strategy: rank 0 wrote the file there


class PredictionModule(L.LightningModule):
    """trainer.predict wrapper: Lightning puts the net on each device; results are gathered and rank 0 writes the CSV.

    Normalisation runs on the device from the Predictor's own table (uint8 crosses the bus, not float).
    """

    def __init__(self, predictor: Predictor, files: Sequence[Path], out: Path) -> None:
        super().__init__()
        self.net = predictor.net
        self.register_buffer("lut", torch.from_numpy(predictor.lut.T.copy()), persistent=False)  # (256, 3)
        self.predictor, self.files, self.out = predictor, list(files), out
        self.results: list[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]] = []
        self.counts: dict[str, int] | None = None

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        logits = None
        if len(batch.index):
            x = self.lut[batch.images.long()].permute(0, 3, 1, 2)  # (n, S, S, 3) -> (n, 3, S, S)
            logits = tta_logits(self.net, x, self.predictor.tta).float().cpu().numpy()
        self.results.append((batch.index.cpu().tolist(), logits, list(batch.failed)))

    def on_predict_epoch_end(self) -> None:
        parts = [self.results]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            parts = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, self.results)
        if not self.trainer.is_global_zero:
            return
        merged: dict[int, Prediction] = {}  # keyed by file: a DistributedSampler pads ranks with repeats
        for part in parts:
            for index, logits, failed in part:
                merged.update(batch_predictions(self.predictor, self.files, index, logits, failed))
        self.counts = write_csv(self.predictor, sorted(merged.items()), self.out)


class _ProgressBar(L.Callback):
    """tqdm on stderr for rank 0's share of the batches (Lightning's own bar writes to stdout)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar = _progress(-(-self.total // trainer.world_size), self.enabled and trainer.is_global_zero)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.bar.update(len(batch.index) + len(batch.failed))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar.close()


# -- command line --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lungcnn-predict", description="Classify lung CT images (files, folders, DICOM) into a CSV, one row per image.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    parser.add_argument("--ckpt", required=True, help="a lungcnn checkpoint (.ckpt) or an exported .onnx with its sidecar")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (atomically; default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto: PyTorch on a GPU, else onnxruntime on CPU (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None,
                        help=f"decoding worker processes (default: half the cores, at least 1; here {default_workers()})")
    parser.add_argument("--devices", type=_devices, default=None, help="run under Lightning's trainer.predict on N devices")
    parser.add_argument("--strategy", default=None, help="Lightning strategy for --devices (ddp, ...)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes for a multi-node Lightning strategy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser.parse_args(argv)


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = predict(args.paths, args.ckpt, args.out, args.backend, args.batch_size, args.workers, args.devices,
                      args.strategy, args.num_nodes, progress=not args.no_progress)
    if summary.get("classified") is None:
        return 0  # not the rank that wrote the file
    print(f"lungcnn-predict: {summary['images']} images ({summary['classified']} classified, "
          f"{summary['unreadable']} unreadable) in {summary['seconds']:.2f} s = {summary['images_per_s']:.1f} images/s "
          f"after {summary['startup_s']:.2f} s start-up ({summary['backend']} backend, {summary['workers']} workers); "
          f"wrote {summary['out']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
