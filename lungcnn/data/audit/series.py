"""Likely series: union-find over image links, and neighbouring file numbers that look alike."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lungcnn.data.audit.hashing import hamming

_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def numbered_neighbours(files: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs of files in one folder whose names differ only in their last number, and whose numbers are
    next to each other among those present (a gap is a slice not in this data set, not a new scan)."""
    runs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, file in enumerate(files):
        folder, _, name = file.rpartition("/")
        m = _LAST_NUMBER.search(name)
        if m:
            key = (folder, name[: m.start()] + "#" + name[m.end():])
            runs.setdefault(key, []).append((int(m.group(1)), i))
    pairs = []
    for members in runs.values():
        members.sort()
        pairs += [(a, b) for (_, a), (_, b) in zip(members, members[1:])]
    return pairs


def series_links(frame: pd.DataFrame, series_threshold: int) -> list[tuple[int, int]]:
    """Neighbouring file numbers whose images are similar enough to be slices of one scan."""
    h = frame["dhash"].tolist()
    return [(a, b) for a, b in numbered_neighbours(frame["file"].tolist()) if hamming(h[a], h[b]) <= series_threshold]


def components(n: int, links: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Union-find over `links`: a component id per item, numbered by each component's first item."""
    links = np.asarray(links, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))  # renumber components by first appearance
    return order[labels]


def group_names(ids: np.ndarray) -> list[str]:
    width = len(str(max(int(ids.max()), 0) + 1))
    return [f"g{i + 1:0{width}d}" for i in ids]


def links_within(groups: Sequence[str]) -> np.ndarray:
    """Links that chain each group's members, so an existing grouping can join a union-find."""
    positions = pd.Series(range(len(groups))).groupby(list(groups)).indices.values()
    return np.array([(ix[k], ix[k + 1]) for ix in positions for k in range(len(ix) - 1)], dtype=np.int64).reshape(-1, 2)


def mixed_label_groups(frame: pd.DataFrame, column: str = "audit_group") -> list[dict[str, Any]]:
    """Groups whose images carry more than one label: a copy filed under two classes, or a bad link."""
    out = []
    for name, part in frame.groupby(column, sort=True):
        counts = part["class_name"].value_counts()
        if len(counts) > 1:
            out.append({"group": str(name), "labels": {k: int(v) for k, v in sorted(counts.items())},
                        "files": sorted(part["file"])})
    return out
