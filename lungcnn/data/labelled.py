"""The labelled images of a trained model's split, or of any labelled folder, read as its training read them.

Calibration, evaluation, the domain guard and int8 calibration all ask for "the validation (test, training)
images of this checkpoint, with their labels". `labelled_images` turns what the checkpoint recorded
(`spec.data`: its split file, and either one data.root or data.sources with each source's rendering) into
pixels through the data module's own reader (`transforms.load_for_model`), so a model trained on several
sources is calibrated and evaluated on the pixels it was trained on, each source re-windowed its own way.

The split file is the list: its rows (file, label, group, split[, source]) say which images belong to a split.
A labelled folder given instead (`root`) is scanned with the checkpoint's class map and read as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.data.catalog import scan_folder
from lungcnn.data.rendering import Rendering
from lungcnn.data.sources import parse_sources
from lungcnn.data.splits import SPLITS
from lungcnn.data.transforms import load_for_model
from lungcnn.errors import LungCNNInputError


@dataclass(frozen=True)
class Labelled:
    """Listed images and the readable ones' pixels.

    Attributes:
        frame: one row per listed image: path (on disk), file (as the split file names it), label, group, source.
        images: (n, S, S) uint8 of the readable rows, in row order (what `Predictor.load` gives).
        errors: per row, why it could not be read, or None.
        renderings: per row, its source's rendering (`Rendering.describe()`), None where read as it is (one
            data.root, a folder); part of the feature cache's key.
    """

    frame: pd.DataFrame
    images: np.ndarray
    errors: list[str | None]
    renderings: list[Any]

    @property
    def readable(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the readable rows."""
        return self.frame["label"].to_numpy()[self.readable]

    @property
    def paths(self) -> list[str]:
        """Paths of the readable rows (what the feature cache keys by content)."""
        return list(self.frame["path"][self.readable])

    @property
    def readable_renderings(self) -> list[Any]:
        return [r for r, ok in zip(self.renderings, self.readable, strict=True) if ok]


def labelled_images(data: Mapping[str, Any], preprocessing: Any, class_names: Sequence[str], split: str | None,
                    root: str | Path | None = None, limit: int | None = None) -> Labelled:
    """The images of `split` ("train" | "val" | "test") of the checkpoint whose recorded data is `data`, or with
    `root`, every image of that labelled folder; `preprocessing` is the checkpoint's (`spec.preprocessing`).

    `limit`: at most this many rows, evenly spaced (so every patient range is sampled)."""
    if not data.get("class_folders"):
        raise LungCNNInputError("the checkpoint does not say how its data was laid out (no data.class_folders)")
    renderings: dict[str, Rendering] = {}
    if root is not None:
        base = Path(root)
        frame = scan_folder(base, dict(data["class_folders"]), list(class_names), data.get("normal_as", "drop"))
        frame["path"] = [str(base / f) for f in frame["file"]]
    else:
        frame = _split_rows(data, split)
        if data.get("sources"):
            sources = {s.name: s for s in parse_sources(data["sources"], data["class_folders"])}
            name, rest = _source_and_path(frame, sources)
            frame["path"] = [str(sources[n].root / r) for n, r in zip(name, rest, strict=True)]
            renderings = {n: sources[n].rendering for n in sorted(set(name))}
        else:
            frame["path"] = [str(Path(data.get("root") or "") / f) for f in frame["file"]]
    if "source" not in frame:
        frame["source"] = ""
    frame = frame.reset_index(drop=True)
    if limit is not None and len(frame) > limit:
        frame = frame.iloc[np.linspace(0, len(frame) - 1, limit).round().astype(int)].reset_index(drop=True)
    images, errors = [], []
    for path, file, source in zip(frame["path"], frame["file"], frame["source"], strict=True):
        rendering = renderings.get(source)
        try:
            images.append(load_for_model(path, preprocessing.image_size, preprocessing.window, crop=preprocessing.crop,
                                         rendering=rendering, name=None if rendering is None else file))
            errors.append(None)
        except LungCNNInputError as e:
            errors.append(str(e))
    size = preprocessing.image_size
    stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    described = [None if s not in renderings else renderings[s].describe() for s in frame["source"]]
    return Labelled(frame[["path", "file", "label", "group", "source"]], stacked, errors, described)


def _split_rows(data: Mapping[str, Any], split: str | None) -> pd.DataFrame:
    """The split file's rows of `split` (all rows for None)."""
    split_file = data.get("split_file")
    if not split_file:
        raise LungCNNInputError("the checkpoint has no split file; pass data_root=FOLDER to use a labelled folder")
    path = Path(split_file)
    if not path.is_file():
        raise LungCNNInputError(f"the checkpoint's split file was not found: {path}")
    frame = pd.read_csv(path, dtype={"file": str, "group": str, "split": str, "source": str})
    if not {"file", "label", "split"} <= set(frame.columns) or not frame["split"].isin(SPLITS).all():
        raise LungCNNInputError(f"{path}: not a lungcnn split file (columns file,label,group,split; split in {SPLITS})")
    if "group" not in frame:
        frame["group"] = "file:" + frame["file"]
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise LungCNNInputError(f"the {split} split of {path} is empty")
    return frame.drop(columns="split")


def _source_and_path(frame: pd.DataFrame, sources: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Each `<source>/<path>` file split into its source's name and its path in that source's root."""
    name, rest = zip(*(f.partition("/")[::2] for f in frame["file"]), strict=True) if len(frame) else ((), ())
    unknown = sorted(set(name) - set(sources))
    if unknown:
        raise LungCNNInputError(f"the split file names source(s) {unknown} the checkpoint's data.sources do not list")
    return list(name), list(rest)
