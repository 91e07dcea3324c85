"""Reading files into batches for the model, and one batch's results: shared by the plain loop (`batch.predict`)
and the Lightning path (`distributed`).

Decoding never raises: an unreadable file becomes an (index, reason) pair and a row with its error.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from lungcnn.data.series import Source
from lungcnn.errors import LungCNNInputError
from lungcnn.inference.predictor import Prediction, Predictor


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
                      lungs: np.ndarray | None = None, novelty: np.ndarray | None = None) -> list[tuple[int, Prediction]]:
    """One batch's results in file order: classified images and unreadable files interleaved."""
    done = (list(zip(index, predictor.from_logits(logits, [names[i] for i in index], domain_scores, lungs, novelty)))
            if len(index) else [])
    done += [(i, Prediction(names[i], error=reason)) for i, reason in failed]
    return sorted(done, key=lambda pair: pair[0])


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled, mininterval=0.5, dynamic_ncols=True)
