"""Batch prediction over files and folders: the library behind `lungcnn-predict`.

Files and folders (searched recursively; DICOM files without a known suffix are found by their "DICM"
marker) -> one row per image in lungcnn's prediction schema (`lungcnn.inference.schema`): calibrated
probabilities, the decision, or the reason the file could not be read. Worker processes decode and
preprocess a batch each (`Predictor.load`, the same code as training) while the main process runs the
model, so decoding overlaps inference; a plain process pool rather than torch's DataLoader, so an .onnx
model runs without importing torch. The CSV is written atomically: a failed or interrupted run leaves the
previous file untouched, never half a file. With `devices`/`strategy` the network runs under Lightning's
`trainer.predict` (`lungcnn.inference.distributed`), so many GPUs or nodes use Lightning's strategies.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lungcnn.data.io import SUPPORTED_SUFFIXES
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.onnx_runtime import cpu_count
from lungcnn.inference.predictor import Prediction, Predictor


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

    index: np.ndarray  # (n,) int64, positions in the file list of `images`
    images: np.ndarray  # (n, S, S) uint8
    failed: list[tuple[int, str]]


def read_item(predictor: Predictor, files: Sequence[Path], i: int) -> Item:
    """File i -> the Predictor's (S, S) uint8 image, or the reason the file could not be read (never raises)."""
    try:
        return Item(i, predictor.load(files[i]), None)
    except LungCNNInputError as e:
        return Item(i, None, str(e))
    except Exception as e:  # a decoder bug on one odd file must not end a run over thousands
        return Item(i, None, f"{files[i]}: could not be read ({type(e).__name__}: {e})")


def collate(items: list[Item]) -> Batch:
    ok = [item for item in items if item.error is None]
    images = np.stack([item.image for item in ok]) if ok else np.zeros((0, 0, 0), np.uint8)
    return Batch(np.array([item.index for item in ok], np.int64), images,
                 [(item.index, item.error) for item in items if item.error is not None])


_worker: tuple[Predictor, Sequence[Path]] | None = None  # each decoding process's predictor and file list


def _start_worker(predictor: Predictor, files: Sequence[Path]) -> None:
    global _worker
    _worker = predictor, files


def _read_batch(indices: range) -> Batch:
    predictor, files = _worker
    return collate([read_item(predictor, files, i) for i in indices])


def decoded_batches(files: Sequence[Path], predictor: Predictor, batch_size: int, workers: int) -> Iterator[Batch]:
    """Batches of decoded files in order, `workers` processes decoding up to 4 batches each ahead of the model.

    The window is bounded, so memory stays flat however many files there are; 0 workers decode in this process.
    """
    chunks = [range(i, min(i + batch_size, len(files))) for i in range(0, len(files), batch_size)]
    if not workers:
        yield from (collate([read_item(predictor, files, i) for i in chunk]) for chunk in chunks)
        return
    methods = multiprocessing.get_all_start_methods()  # fork: the workers inherit the predictor, nothing is pickled
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(predictor, files)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(_read_batch, chunk))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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


# -- output ------------------------------------------------------------------------------------------
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
    ready = time.perf_counter()
    with single_threaded_opencv():
        if lightning:
            from lungcnn.inference.distributed import make_loader, run_lightning

            loader = make_loader(files, predictor, batch_size, workers)
            counts = run_lightning(predictor, files, loader, out, devices, strategy, num_nodes, progress)
        else:
            counts = _run_plain(predictor, files, decoded_batches(files, predictor, batch_size, workers), out, progress)
    seconds = time.perf_counter() - ready
    summary = {"images": len(files), **(counts or {}), "out": str(out), "backend": "lightning" if lightning else
               predictor.backend.name, "workers": workers, "batch_size": batch_size,
               "startup_s": ready - started, "seconds": seconds, "images_per_s": len(files) / seconds if seconds else None}
    return summary


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, mininterval=0.5, dynamic_ncols=True)


def _run_plain(predictor: Predictor, files: Sequence[Path], batches: Iterable[Batch], out: Path,
               progress: bool) -> dict[str, int]:
    with schema.Writer(out, predictor.task) as writer, progress_bar(len(files), progress) as bar:
        for batch in batches:
            logits = predictor.logits(batch.images, batch_size=max(len(batch.index), 1)) if len(batch.index) else None
            for _, p in batch_predictions(predictor, files, batch.index.tolist(), logits, batch.failed):
                writer.write(p)
            bar.update(len(batch.index) + len(batch.failed))
    return writer.counts


