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
from lungcnn.data.series import ZIP_SUFFIX, ArchiveLimits, Source, group_series, read_groups, sources_from_files
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.onnx_runtime import cpu_count
from lungcnn.inference.predictor import Prediction, Predictor
from lungcnn.inference.study import summarise


# -- inputs ------------------------------------------------------------------------------------------
def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Named files as given (any suffix: the reader says why one is unreadable), folders searched recursively.

    In folders: supported suffixes and zips, plus DICOM files by their marker (series are often named without
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
    if path.suffix.lower() in SUPPORTED_SUFFIXES or path.suffix.lower() == ZIP_SUFFIX:
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


def read_item(predictor: Predictor, sources: Sequence[Source], i: int) -> Item:
    """Source i (a file or a zip member) -> the Predictor's (S, S) uint8 image, or why it could not be read
    (never raises)."""
    source = sources[i]
    try:
        return Item(i, predictor.load(source.content, name=source.name), None)
    except LungCNNInputError as e:
        return Item(i, None, str(e))
    except Exception as e:  # a decoder bug on one odd file must not end a run over thousands
        return Item(i, None, f"{source.name}: could not be read ({type(e).__name__}: {e})")


def collate(items: list[Item]) -> Batch:
    ok = [item for item in items if item.error is None]
    images = np.stack([item.image for item in ok]) if ok else np.zeros((0, 0, 0), np.uint8)
    return Batch(np.array([item.index for item in ok], np.int64), images,
                 [(item.index, item.error) for item in items if item.error is not None])


_worker: tuple[Predictor, Sequence[Source]] | None = None  # each decoding process's predictor and sources


def _start_worker(predictor: Predictor, sources: Sequence[Source]) -> None:
    global _worker
    _worker = predictor, sources


def _read_batch(indices: range) -> Batch:
    predictor, sources = _worker
    return collate([read_item(predictor, sources, i) for i in indices])


def decoded_batches(sources: Sequence[Source], predictor: Predictor, batch_size: int, workers: int) -> Iterator[Batch]:
    """Batches of decoded files in order, `workers` processes decoding up to 4 batches each ahead of the model.

    The window is bounded, so memory stays flat however many files there are; 0 workers decode in this process.
    """
    chunks = [range(i, min(i + batch_size, len(sources))) for i in range(0, len(sources), batch_size)]
    if not workers:
        yield from (collate([read_item(predictor, sources, i) for i in chunk]) for chunk in chunks)
        return
    methods = multiprocessing.get_all_start_methods()  # fork: the workers inherit the predictor, nothing is pickled
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(predictor, sources)) as pool:
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
def batch_predictions(predictor: Predictor, names: Sequence[str], index: Sequence[int], logits: np.ndarray,
                      failed: Sequence[tuple[int, str]], domain_scores: np.ndarray | None = None,
                      lungs: np.ndarray | None = None) -> list[tuple[int, Prediction]]:
    """One batch's results in file order: classified images and unreadable files interleaved."""
    done = (list(zip(index, predictor.from_logits(logits, [names[i] for i in index], domain_scores, lungs)))
            if len(index) else [])
    done += [(i, Prediction(names[i], error=reason)) for i, reason in failed]
    return sorted(done, key=lambda pair: pair[0])


# -- running -----------------------------------------------------------------------------------------
def default_workers() -> int:
    """One decoding worker per two cores (at least one): decoding is a few times cheaper than the model."""
    return max(1, cpu_count() // 2)


def predict(paths: Sequence[str | Path], ckpt: str | Path, out: str | Path = "predictions.csv", backend: str = "auto",
            batch_size: int = 32, workers: int | None = None, devices: int | str | None = None,
            strategy: str | None = None, num_nodes: int = 1, progress: bool = True, series_out: str | Path | None = None,
            groups: str | Path | None = None, lung_check: bool | None = None) -> dict[str, Any]:
    """Classify every image under `paths` (zips opened in memory) and write `out` atomically; return counts and
    timings. `series_out` also writes one row per series (`lungcnn.data.series` groups them; `groups` is a
    file,group CSV for images without DICOM series tags). `lung_check` overrides the checkpoint's lung check."""
    started = time.perf_counter()
    if batch_size < 1:
        raise LungCNNInputError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise LungCNNInputError(f"--workers must be >= 0, got {workers}")
    out = Path(out)
    if out.is_dir():
        raise LungCNNInputError(f"--out {out} is a folder; give a file name such as {out / 'predictions.csv'}")
    if series_out is not None and (Path(series_out).is_dir() or Path(series_out).resolve() == out.resolve()):
        raise LungCNNInputError(f"--series-out {series_out} must be a file name other than --out, e.g. series.csv")
    lightning = devices is not None or strategy is not None
    if lightning and backend == "onnx":
        raise LungCNNInputError("--devices/--strategy run the PyTorch network under Lightning; use --backend torch or auto")
    group_table = read_groups(groups) if groups is not None else None
    sources = sources_from_files(collect_files(paths), ArchiveLimits())
    if not sources:
        raise LungCNNInputError(f"no images found in {', '.join(map(str, paths))} (the zip files hold none)")
    names = [s.name for s in sources]
    workers = default_workers() if workers is None else workers
    if lightning:
        predictor = Predictor.from_checkpoint(ckpt, "torch", lung_check=lung_check)
    else:
        predictor = Predictor.from_checkpoint(ckpt, backend, channels_last=True, lung_check=lung_check)
    ready = time.perf_counter()
    with single_threaded_opencv():
        if lightning:
            from lungcnn.inference.distributed import make_loader, run_lightning

            loader = make_loader(sources, predictor, batch_size, workers)
            counts = run_lightning(predictor, names, loader, out, devices, strategy, num_nodes, progress)
        else:
            counts = _run_plain(predictor, names, decoded_batches(sources, predictor, batch_size, workers), out, progress)
    if series_out is not None and counts is not None:
        counts = {**counts, "series": write_series(predictor, sources, group_table, out, series_out)}
    seconds = time.perf_counter() - ready
    summary = {"images": len(sources), **(counts or {}), "out": str(out), "backend": "lightning" if lightning else
               predictor.backend.name, "workers": workers, "batch_size": batch_size,
               "startup_s": ready - started, "seconds": seconds, "images_per_s": len(sources) / seconds if seconds else None}
    return summary


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, mininterval=0.5, dynamic_ncols=True)


def _run_plain(predictor: Predictor, names: Sequence[str], batches: Iterable[Batch], out: Path,
               progress: bool) -> dict[str, int]:
    with schema.Writer(out, predictor.task) as writer, progress_bar(len(names), progress) as bar:
        for batch in batches:
            logits, scores = (predictor.forward(batch.images, batch_size=max(len(batch.index), 1))
                              if len(batch.index) else (None, None))
            lungs = predictor.lungs(batch.images) if len(batch.index) else None
            for _, p in batch_predictions(predictor, names, batch.index.tolist(), logits, batch.failed, scores, lungs):
                writer.write(p)
            bar.update(len(batch.index) + len(batch.failed))
    return writer.counts




def write_series(predictor: Predictor, sources: Sequence[Source], groups: dict | None, slices_csv: Path,
                 series_out: str | Path) -> int:
    """The series table from the slice table just written (so every backend's rows are summarised alike)."""
    target = predictor.spec.series_target
    slices = schema.read_slice_probabilities(slices_csv, target)
    results = [summarise(predictor.spec, s.key, [x.name for x in s.sources], [slices[x.name][0] for x in s.sources],
                         [slices[x.name][1] for x in s.sources], [slices[x.name][2] for x in s.sources])
               for s in group_series(sources, groups)]
    return schema.write_series_csv(series_out, target, (r.row(target) for r in results))
