"""Several CT sources as one labelled table: `data.sources`, each with its root, class map, rendering, groups, weight.

A source is one collection of slices made one way (one hospital's export, one public data set). Declared in
the data config (docs/sources.md):

    sources:
      - name: iqothnccd
        root: ../shared/data/iqothnccd-dev
        class_folders: {Bengin cases: not_malignant, Malignant cases: malignant, Normal cases: normal}
        window: iqothnccd        # how its pixels were rendered (lungcnn.data.rendering.parse_window)
        groups: groups.csv       # a groups.csv in root | similarity (the audit's grouping) | none
        weight: 1.0              # share of the training draws (imbalance=sampler)
        about: "..."             # provenance and licence, one line, for the model card

`scan_sources` reads every source with `catalog.scan_folder` and stacks them: `file` becomes
``<source>/<path in its root>`` (unique across sources), `group` ``<source>:<group>`` (no group spans two
sources, so a grouped split is grouped within each source), and a `source` column is added. Every source is
checked (root, class folders, window, groups, weight) before any image is decoded.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lungcnn.data.catalog import scan_folder
from lungcnn.data.rendering import Rendering, parse_window
from lungcnn.errors import LungCNNInputError, fail

GROUPS_SIMILARITY, GROUPS_NONE = "similarity", "none"
KEYS = {"name", "root", "class_folders", "window", "groups", "weight", "about"}


@dataclass(frozen=True)
class Source:
    name: str
    root: Path
    class_folders: dict[str, str]
    rendering: Rendering
    groups: str = "groups.csv"
    weight: float = 1.0
    about: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root.resolve()), "class_folders": dict(self.class_folders),
                "window": self.rendering.describe(), "groups": self.groups, "weight": self.weight, "about": self.about}


def parse_sources(raw: Any, default_class_folders: Mapping[str, str] | None = None) -> list[Source]:
    """`data.sources` -> checked Sources (names unique, roots present, windows known); nothing is read yet."""
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence) or not raw:
        fail("data.sources", "a non-empty list of sources (name, root, class_folders, window, groups, weight)", raw)
    sources, names = [], set()
    for i, entry in enumerate(raw):
        key = f"data.sources[{i}]"
        if not isinstance(entry, Mapping):
            fail(key, "a mapping with name, root, window (and class_folders, groups, weight)", entry)
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise LungCNNInputError(f"{key}: unknown key(s) {unknown}; a source has {sorted(KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or ":" in name:
            fail(f"{key}.name", "a non-empty name without '/' or ':'", name)
        if name in names:
            raise LungCNNInputError(f"{key}.name: two sources are called {name!r}")
        names.add(name)
        key = f"data.sources[{name}]"
        if not entry.get("root"):
            raise LungCNNInputError(f"{key}.root is missing: the folder of this source's class folders")
        root = Path(str(entry["root"]))
        if not root.is_dir():
            raise LungCNNInputError(f"{key}.root: folder not found: {root}")
        if "window" not in entry:
            raise LungCNNInputError(f"{key}.window is missing: how were its images rendered? (a known export window, "
                                    "{level, width}, 'hu' for DICOM or 'as_is')")
        rendering = parse_window(f"{key}.window", entry["window"])
        class_folders = entry.get("class_folders") or default_class_folders
        if not isinstance(class_folders, Mapping) or not class_folders:
            fail(f"{key}.class_folders", "a non-empty mapping folder name -> class name", class_folders)
        groups = entry.get("groups", "groups.csv")
        if not isinstance(groups, str) or not groups:
            fail(f"{key}.groups", f"a groups.csv file name in its root, {GROUPS_SIMILARITY!r} or {GROUPS_NONE!r}", groups)
        if groups not in (GROUPS_SIMILARITY, GROUPS_NONE) and not (root / groups).is_file():
            raise LungCNNInputError(f"{key}.groups: {root / groups} not found; use groups={GROUPS_SIMILARITY} to group "
                                    f"near-identical images, or {GROUPS_NONE} (each image its own group)")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight > 0:
            fail(f"{key}.weight", "a number > 0", weight)
        about = entry.get("about", "")
        if not isinstance(about, str):
            fail(f"{key}.about", "one line of text (provenance and licence, for the model card)", about)
        sources.append(Source(name, root, {str(k): str(v) for k, v in class_folders.items()}, rendering, groups,
                              float(weight), about))
    return sources


def scan_sources(sources: Sequence[Source], class_names: list[str], normal_as: str) -> pd.DataFrame:
    """One row per image of every source: file (``<source>/<path>``), label, class_name, group, source."""
    frames = []
    for source in sources:
        groups_file = None if source.groups in (GROUPS_SIMILARITY, GROUPS_NONE) else source.groups
        try:
            frame = scan_folder(source.root, source.class_folders, class_names, normal_as, groups_file=groups_file,
                                require_all_classes=False)
        except LungCNNInputError as e:
            raise LungCNNInputError(f"data.sources[{source.name}]: {e}") from None
        if frame.empty:
            raise LungCNNInputError(f"data.sources[{source.name}]: no image is left after data.normal_as={normal_as}")
        if source.groups == GROUPS_SIMILARITY:
            frame["group"] = similarity_groups(source.root, frame["file"].tolist())
        frame["group"] = source.name + ":" + frame["group"].astype(str)
        frame["file"] = source.name + "/" + frame["file"]
        frame["source"] = source.name
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    missing = sorted(set(range(len(class_names))) - set(frame["label"]))
    if missing:
        raise LungCNNInputError(f"data.sources: no source has images of class(es) {[class_names[i] for i in missing]}; "
                                "check each source's class_folders")
    return frame


def similarity_groups(root: Path, files: list[str]) -> list[str]:
    """Groups of near-identical images (and neighbouring file numbers that look alike), the audit's grouping,
    for a source whose patients are unknown: without it, re-saved copies of one slice land in train and test."""
    import numpy as np

    from lungcnn.data.audit.hashing import duplicate_sets, near_duplicate_pairs
    from lungcnn.data.audit.run import SERIES_THRESHOLD, THRESHOLD, image_features
    from lungcnn.data.audit.series import components, group_names, series_links

    frame = pd.DataFrame({"file": files})
    feats, _, _ = image_features(root, frame)  # an unreadable image is left out here: it keeps its own group
    pairs = near_duplicate_pairs(feats["dhash"].tolist(), THRESHOLD)
    exact = [(s[0], other) for s in duplicate_sets(feats["pixel_sha256"]) for other in s[1:]]
    links = [*pairs[:, :2].tolist(), *series_links(feats, SERIES_THRESHOLD), *exact]
    names = dict(zip(feats["file"], group_names(components(len(feats), np.asarray(links).reshape(-1, 2))), strict=True))
    return [names.get(f, f"file:{f}") for f in files]
