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

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lungcnn.data.io import SUPPORTED_SUFFIXES
from lungcnn.data.rendering import parse_export_window
from lungcnn.data.series import ZIP_SUFFIX, ArchiveLimits, Source, group_series, read_groups, sources_from_files
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.onnx_runtime import cpu_count
from lungcnn.inference.predictor import Predictor
from lungcnn.inference.reading import Batch, batch_predictions, decoded_batches, progress_bar, single_threaded_opencv
from lungcnn.inference.series import summarise


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


# -- running -----------------------------------------------------------------------------------------
def default_workers() -> int:
    """One decoding worker per two cores (at least one): decoding is a few times cheaper than the model."""
    return max(1, cpu_count() // 2)


def predict(paths: Sequence[str | Path], ckpt: str | Path, out: str | Path = "predictions.csv", backend: str = "auto",
            batch_size: int = 32, workers: int | None = None, devices: int | str | None = None,
            strategy: str | None = None, num_nodes: int = 1, progress: bool = True, series_out: str | Path | None = None,
            groups: str | Path | None = None, lung_check: bool | None = None,
            export_window: str | None = None) -> dict[str, Any]:
    """Classify every image under `paths` (zips opened in memory) and write `out` atomically; return counts and
    timings. `series_out` also writes one row per series (`lungcnn.data.series` groups them; `groups` is a
    file,group CSV for images without DICOM series tags). `lung_check` overrides the checkpoint's lung check.
    `export_window`: how the 8-bit images were exported (`rendering.parse_export_window`), re-windowed into the
    model's window as training reads a source with that window; None: as they are."""
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
    rendering = parse_export_window(export_window)
    group_table = read_groups(groups) if groups is not None else None
    sources = sources_from_files(collect_files(paths), ArchiveLimits())
    if not sources:
        raise LungCNNInputError(f"no images found in {', '.join(map(str, paths))} (the zip files hold none)")
    names = [s.name for s in sources]
    workers = default_workers() if workers is None else workers
    if lightning:
        predictor = Predictor.from_checkpoint(ckpt, "torch", lung_check=lung_check, export_window=rendering)
    else:
        predictor = Predictor.from_checkpoint(ckpt, backend, channels_last=True, lung_check=lung_check,
                                              export_window=rendering)
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
               "export_window": export_window or "as_is",
               "startup_s": ready - started, "seconds": seconds, "images_per_s": len(sources) / seconds if seconds else None}
    return summary


def _run_plain(predictor: Predictor, names: Sequence[str], batches: Iterable[Batch], out: Path,
               progress: bool) -> dict[str, int]:
    with schema.Writer(out, predictor.task) as writer, progress_bar(len(names), progress) as bar:
        for batch in batches:
            logits, scores, novelty = (predictor.forward(batch.images, batch_size=max(len(batch.index), 1))
                                       if len(batch.index) else (None, None, None))
            lungs = predictor.lungs(batch.images) if len(batch.index) else None
            for _, p in batch_predictions(predictor, names, batch.index.tolist(), logits, batch.failed, scores, lungs,
                                          novelty):
                writer.write(p)
            bar.update(len(batch.index) + len(batch.failed))
    return writer.counts




def write_series(predictor: Predictor, sources: Sequence[Source], groups: dict | None, slices_csv: Path,
                 series_out: str | Path) -> int:
    """The series table from the slice table just written (so every backend's rows are summarised alike)."""
    target = predictor.spec.series_target
    slices = schema.read_slice_probabilities(slices_csv, target)
    results = [summarise(predictor.spec, s.key, [x.name for x in s.sources],
                         *([slices[x.name][i] for x in s.sources] for i in range(4)))
               for s in group_series(sources, groups)]
    return schema.write_series_csv(series_out, target, (r.row(target) for r in results))
