"""Leakage audit of a folder-per-class CT data set: `lungcnn-audit DATA_DIR [--out groups.csv]`.

Slices of one scan are near-copies, and published IQ-OTH/NCCD results split them at random, so the
same patient lands in train and test. This audit finds what a grouped split needs, without any labels
from the user:

- exact duplicates (same bytes; same decoded pixels);
- near-duplicates: a 64-bit difference hash (dHash) of the `read_image` output (so DICOM works too)
  within `--threshold` bits;
- likely series: union-find over near-duplicate links plus links between neighbouring file numbers in
  one folder (`case (12).jpg` - `case (13).jpg`) whose hashes are within the looser
  `--series-threshold`, since adjacent file numbers are usually adjacent slices of one scan.

It writes `groups.csv` (file,label,group), which `lungcnn.data.catalog.scan_folder` reads for grouped
splits, and reports mixed-label groups, how many test images would see a near-duplicate or a same-group
image in training under a random versus a grouped split, the agreement (adjusted Rand index) with an
existing groups.csv, and a shortcut check: how well image size or the intensity histogram alone, with no
anatomy, separate the classes under grouped cross-validation.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lungcnn.cli import friendly_errors
from lungcnn.data.catalog import scan_folder
from lungcnn.data.io import read_image
from lungcnn.data.splits import assign_splits
from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open, write_json

# Same map as conf/data/folder.yaml (tests check they agree): IQ-OTH/NCCD's folders and lowercase names.
CLASS_FOLDERS: dict[str, str] = {
    "Bengin cases": "benign",
    "Benign cases": "benign",
    "Malignant cases": "malignant",
    "Normal cases": "normal",
    "benign": "benign",
    "malignant": "malignant",
    "normal": "normal",
}
CLASS_ORDER = ("benign", "malignant", "normal")
GROUPS_FILE = "groups.csv"
THRESHOLD = 2  # bits of 64: near-duplicates (0 cross-series pairs at <= 1, 8 of 619 at 2 on the dev set)
SERIES_THRESHOLD = 12  # bits of 64: neighbouring file numbers that still look like one scan
# dHash dead zone: a brightness step below ~half a grey level is "no step", so flat black background
# (a third of a CT slice) gives stable bits instead of bits that flip with noise or JPEG ringing.
DEAD_ZONE = 1 / 512
HIST_BINS = 32
CV_FOLDS = 5
# (task, classes): binary tasks give the ROC-AUC of the last class against the first.
SHORTCUT_TASKS = (
    ("malignant_vs_benign", ("benign", "malignant")),
    ("benign_vs_normal", ("normal", "benign")),
    ("three_class", ("benign", "malignant", "normal")),
)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


# --- hashing -------------------------------------------------------------------------------------


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit dHash: the sign of each horizontal step of a 9x8 area-averaged thumbnail.

    It beat a DCT pHash at telling slices of one series from other scans on the dev set (adjusted Rand
    index 0.83-0.88 vs 0.78 against the published grouping); the dead zone keeps it stable under noise.
    """
    small = cv2.resize(np.asarray(image, dtype=np.float32), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] - small[:, :-1]) > DEAD_ZONE
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


def intensity_histogram(image: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Share of pixels in each of `bins` equal brightness bins of [0, 1] (1.0 in the last bin)."""
    image = np.asarray(image, dtype=np.float32)
    return cv2.calcHist([image], [0], None, [bins], [0.0, 1.0 + 1e-6]).ravel() / image.size


# --- discovery and features ----------------------------------------------------------------------


def find_images(root: str | Path) -> pd.DataFrame:
    """Every image under `root` (normal included as its own class): file, label, class_name, folder, group.

    `group` is the existing groups.csv's group (own group where it has none, or where there is no file).
    """
    root = Path(root)
    if not root.is_dir():
        raise LungCNNInputError(f"data folder not found: {root}")
    present = {CLASS_FOLDERS[p.name] for p in root.iterdir() if p.is_dir() and p.name in CLASS_FOLDERS}
    class_names = [c for c in CLASS_ORDER if c in present]
    normal_as = "class" if "normal" in class_names else "drop"
    groups_file = GROUPS_FILE if (root / GROUPS_FILE).is_file() else None
    try:
        frame = scan_folder(root, CLASS_FOLDERS, class_names, normal_as, groups_file=groups_file)
    except LungCNNInputError as e:
        raise LungCNNInputError(f"{e} (lungcnn-audit knows the folders {sorted(CLASS_FOLDERS)})") from None
    frame["folder"] = [f.split("/", 1)[0] for f in frame["file"]]
    return frame.reset_index(drop=True)


def image_features(root: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Read each image once: byte and pixel sha256, dHash, size, histogram. Unreadable files are dropped
    and returned as messages, so one bad file does not hide the audit of the rest."""
    rows, hists, unreadable = [], [], []
    for i, file in enumerate(frame["file"]):
        data = (root / file).read_bytes()
        try:
            image = read_image(data, name=file)
        except LungCNNInputError as e:
            unreadable.append(str(e))
            continue
        pixels = hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()
        rows.append((i, hashlib.sha256(data).hexdigest(), pixels, perceptual_hash(image), image.shape[1], image.shape[0]))
        hists.append(intensity_histogram(image))
    if not rows:
        raise LungCNNInputError(f"{root}: none of the {len(frame)} images could be read")
    cols = ["sha256", "pixel_sha256", "dhash", "width", "height"]
    feats = pd.DataFrame([r[1:] for r in rows], columns=cols, index=[r[0] for r in rows])
    kept = frame.loc[feats.index].join(feats).reset_index(drop=True)
    return kept, np.asarray(hists), unreadable


# --- duplicates and series -----------------------------------------------------------------------


def duplicate_sets(keys: pd.Series) -> list[list[int]]:
    """Positions sharing one key (a content hash), for every key held by more than one image."""
    return [list(ix) for ix in keys.groupby(keys).indices.values() if len(ix) > 1]


def n_pairs(sets: list[list[int]]) -> int:
    return sum(len(s) * (len(s) - 1) // 2 for s in sets)


def near_duplicate_pairs(hashes: Sequence[int], threshold: int, chunk: int = 2048) -> np.ndarray:
    """(i, j, distance) rows, i < j, for every pair within `threshold` bits; chunked so memory stays O(n)."""
    h = np.array([int(x) for x in hashes], dtype=np.uint64)
    found = []
    for start in range(0, len(h), chunk):
        dist = np.bitwise_count(h[start:start + chunk, None] ^ h[None, :])
        i, j = np.nonzero(dist <= threshold)
        keep = j > i + start
        found.append(np.stack([i[keep] + start, j[keep], dist[i[keep], j[keep]]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 3), np.int64)


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


# --- leakage -------------------------------------------------------------------------------------


def leakage(frame: pd.DataFrame, pairs: np.ndarray, *, existing: bool = False, seed: int = 0,
            val_fraction: float = 0.15, test_fraction: float = 0.2) -> dict[str, Any]:
    """Test images with a near-duplicate, or an image of their (audit / existing) group, in training:
    under a random image-level split, a split grouped by the audit's groups, and by the existing ones."""
    scenarios = {"random": ("audit_group", False), "grouped_audit": ("audit_group", True)}
    if existing:
        scenarios["grouped_existing"] = ("existing_group", True)
    out: dict[str, Any] = {}
    for name, (column, grouped) in scenarios.items():
        try:
            split = assign_splits(frame.assign(group=frame[column]), val_fraction=val_fraction,
                                  test_fraction=test_fraction, seed=seed, grouped=grouped).to_numpy()
        except LungCNNInputError as e:
            out[name] = {"skipped": str(e)}
            continue
        out[name] = _leaks(frame, pairs, split, existing)
    return out


def _leaks(frame: pd.DataFrame, pairs: np.ndarray, split: np.ndarray, existing: bool) -> dict[str, int]:
    test, train = split == "test", split == "train"
    near = np.zeros(len(frame), bool)
    i, j = pairs[:, 0], pairs[:, 1]
    near[i[test[i] & train[j]]] = True
    near[j[test[j] & train[i]]] = True
    result = {"test_images": int(test.sum()), "near_duplicate_in_train": int(near.sum())}
    any_leak = near.copy()
    columns = ["audit_group"] + (["existing_group"] if existing else [])
    for column in columns:
        in_train = set(frame.loc[train, column])
        same = test & frame[column].isin(in_train).to_numpy()
        result[f"same_{column}_in_train"] = int(same.sum())
        any_leak |= same
    result["any_leak"] = int(any_leak.sum())
    return result


# --- shortcut check ------------------------------------------------------------------------------


def shortcut_check(frame: pd.DataFrame, hists: np.ndarray, groups: Sequence[str], *, seed: int = 0,
                   folds: int = CV_FOLDS) -> dict[str, dict[str, Any]]:
    """Grouped-CV scores of classifiers that see no anatomy: the intensity histogram, the image size.

    A high score means the classes differ in acquisition (scanner, window, crop, export size), and a CNN
    can score well by learning that instead of the lesion.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    # A tree for size: a shortcut there is "this odd size -> malignant", which is not monotone in pixels.
    features = {
        "intensity_histogram": (hists, lambda: make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))),
        "image_size": (frame[["width", "height"]].to_numpy(dtype=np.float64),
                       lambda: DecisionTreeClassifier(max_depth=4, min_samples_leaf=3, class_weight="balanced", random_state=0)),
    }
    classes = frame["class_name"].to_numpy()
    groups = np.asarray(groups)
    out: dict[str, dict[str, Any]] = {}
    for feature, (x, model) in features.items():
        out[feature] = {}
        for task, names in SHORTCUT_TASKS:
            rows = np.isin(classes, names)
            y = np.array([names.index(c) for c in classes[rows]])
            out[feature][task] = _grouped_cv_score(model, x[rows], y, groups[rows], len(names), seed, folds)
    return out


def _grouped_cv_score(model: Any, x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, seed: int,
                      folds: int) -> dict[str, Any]:
    """Mean over grouped folds of the ROC-AUC (k = 2) or balanced accuracy (k > 2) of `model()`.

    Per fold, not pooled: each fold's model has its own intercept, and pooling such scores can push a
    useless feature's AUC well below 0.5.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    if len(np.unique(y)) < k:
        return {"skipped": "a class of this task has no images"}
    n_splits = min(folds, min(len(np.unique(groups[y == c])) for c in range(k)))
    if n_splits < 2:
        return {"skipped": "a class of this task has fewer than 2 groups"}
    scores = []
    for train, test in StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x, y, groups):
        if len(np.unique(y[train])) < k or len(np.unique(y[test])) < k:
            return {"skipped": "a cross-validation fold lacks a class"}
        prob = model().fit(x[train], y[train]).predict_proba(x[test])
        scores.append(roc_auc_score(y[test], prob[:, 1]) if k == 2 else balanced_accuracy_score(y[test], prob.argmax(1)))
    return {"metric": "roc_auc" if k == 2 else "balanced_accuracy", "value": float(np.mean(scores)),
            "per_fold": [round(float(s), 4) for s in scores], "n": len(y)}


# --- the audit -----------------------------------------------------------------------------------


def audit(root: str | Path, *, threshold: int = THRESHOLD, series_threshold: int = SERIES_THRESHOLD, seed: int = 0,
          folds: int = CV_FOLDS) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run every check on `root`; return the images (with column `audit_group`) and the report dict."""
    start = time.perf_counter()
    root = Path(root)
    if not 0 <= threshold <= 64 or not 0 <= series_threshold <= 64:
        raise LungCNNInputError(f"hash thresholds are bits of 64, got {threshold} and {series_threshold}")
    if folds < 2:
        raise LungCNNInputError(f"--folds must be >= 2, got {folds}")
    found = find_images(root)
    has_existing = (root / GROUPS_FILE).is_file()
    frame, hists, unreadable = image_features(root, found)
    frame = frame.rename(columns={"group": "existing_group"})

    byte_sets, pixel_sets = duplicate_sets(frame["sha256"]), duplicate_sets(frame["pixel_sha256"])
    pairs = near_duplicate_pairs(frame["dhash"].tolist(), threshold)
    series = series_links(frame, series_threshold)
    exact = [(s[0], other) for s in pixel_sets for other in s[1:]]
    frame["audit_group"] = group_names(components(len(frame), [*pairs[:, :2].tolist(), *series, *exact]))

    # Cross-validation groups: the audit's and the existing ones together, so no link of either crosses folds.
    merged = links_within(frame["audit_group"].tolist())
    if has_existing:
        merged = np.concatenate([merged, links_within(frame["existing_group"].tolist())])
    cv_groups = components(len(frame), merged)

    report = {
        "data_dir": str(root),
        "n_images": len(frame),
        "classes": {c: int((frame["class_name"] == c).sum()) for c in CLASS_ORDER if (frame["class_name"] == c).any()},
        "unreadable": unreadable,
        "settings": {"hash": "dHash, 64 bits, of the read_image output", "threshold": threshold,
                     "series_threshold": series_threshold, "seed": seed, "val_fraction": 0.15, "test_fraction": 0.2,
                     "cv_folds": folds},
        "exact_duplicates": _exact_report(frame, byte_sets, pixel_sets),
        "near_duplicates": _near_report(frame, pairs),
        "groups": _groups_report(frame, series),
        "leakage": leakage(frame, pairs, existing=has_existing, seed=seed),
        "agreement_with_existing": _agreement(frame) if has_existing else None,
        "image_sizes": _sizes(frame),
        "shortcuts": shortcut_check(frame, hists, cv_groups, seed=seed, folds=folds),
    }
    report["seconds"] = round(time.perf_counter() - start, 2)
    return frame, report


def _exact_report(frame: pd.DataFrame, byte_sets: list[list[int]], pixel_sets: list[list[int]]) -> dict[str, Any]:
    files = frame["file"].tolist()
    return {"byte_identical_pairs": n_pairs(byte_sets), "pixel_identical_pairs": n_pairs(pixel_sets),
            "byte_identical_sets": [[files[i] for i in s] for s in byte_sets],
            "pixel_identical_sets": [[files[i] for i in s] for s in pixel_sets]}


def _near_report(frame: pd.DataFrame, pairs: np.ndarray) -> dict[str, Any]:
    """Near-duplicate pairs that are not pixel-identical, with their distance."""
    files, pix, cls = frame["file"].tolist(), frame["pixel_sha256"].tolist(), frame["class_name"].tolist()
    listed = [{"a": files[i], "b": files[j], "distance": int(d)} for i, j, d in pairs.tolist() if pix[i] != pix[j]]
    cross = sum(cls[i] != cls[j] for i, j, _ in pairs.tolist())
    return {"pairs": len(listed), "pairs_across_classes": int(cross), "list": listed}


def _groups_report(frame: pd.DataFrame, series: list[tuple[int, int]]) -> dict[str, Any]:
    sizes = frame["audit_group"].value_counts()
    return {"n_groups": int(len(sizes)), "largest": int(sizes.max()), "single_images": int((sizes == 1).sum()),
            "series_links": len(series), "mixed_label": mixed_label_groups(frame)}


def _agreement(frame: pd.DataFrame) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    return {"file": GROUPS_FILE, "adjusted_rand_index": float(adjusted_rand_score(frame["existing_group"], frame["audit_group"])),
            "n_groups_existing": int(frame["existing_group"].nunique()),
            "mixed_label_existing": len(mixed_label_groups(frame, "existing_group"))}


def _sizes(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    size = frame["width"].astype(str) + "x" + frame["height"].astype(str)
    return {c: {k: int(v) for k, v in size[frame["class_name"] == c].value_counts().items()}
            for c in CLASS_ORDER if (frame["class_name"] == c).any()}


def write_groups(frame: pd.DataFrame, path: str | Path) -> None:
    """groups.csv as `scan_folder` reads it: file (relative, '/'), label (class folder name), group."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "group"])
        for row in frame.sort_values("file").itertuples():
            w.writerow([row.file, row.folder, row.audit_group])


# --- summary and command line --------------------------------------------------------------------


def format_summary(report: dict[str, Any]) -> str:
    classes = ", ".join(f"{k} {v}" for k, v in report["classes"].items())
    ex, near, grp = report["exact_duplicates"], report["near_duplicates"], report["groups"]
    lines = [
        f"lungcnn-audit: {report['n_images']} images in {report['data_dir']} ({classes}), {report['seconds']} s",
        f"exact duplicates: {ex['byte_identical_pairs']} byte-identical pairs, "
        f"{ex['pixel_identical_pairs']} pixel-identical pairs",
        f"near duplicates (dHash <= {report['settings']['threshold']} of 64 bits): {near['pairs']} more pairs, "
        f"{near['pairs_across_classes']} of all near/exact pairs across classes",
        f"series groups: {grp['n_groups']} (largest {grp['largest']} images, {grp['single_images']} single images; "
        f"{grp['series_links']} neighbouring-number links within {report['settings']['series_threshold']} bits)",
        f"groups mixing labels: {len(grp['mixed_label'])}"
        + "".join(f"\n  {g['group']}: {g['labels']}" for g in grp["mixed_label"][:10]),
    ]
    if report["unreadable"]:
        lines.append(f"unreadable images (left out): {len(report['unreadable'])}, e.g. {report['unreadable'][0]}")
    lines += _size_lines(report["image_sizes"])
    lines += _leakage_lines(report["leakage"])
    agree = report["agreement_with_existing"]
    if agree:
        lines.append(f"agreement with the existing {agree['file']}: adjusted Rand index {agree['adjusted_rand_index']:.3f} "
                     f"({agree['n_groups_existing']} groups there, {agree['mixed_label_existing']} mixing labels)")
    lines += _shortcut_lines(report["shortcuts"])
    return "\n".join(lines)


def _size_lines(sizes: dict[str, dict[str, int]]) -> list[str]:
    """Image sizes per class, and how many images have a size no other class has (a possible shortcut)."""
    listed = "; ".join(f"{c} " + ", ".join(f"{k} {v}" for k, v in s.items()) for c, s in sizes.items())
    owners: dict[str, set[str]] = {}
    for c, s in sizes.items():
        for k in s:
            owners.setdefault(k, set()).add(c)
    only = sum(v for c, s in sizes.items() for k, v in s.items() if owners[k] == {c}) if len(sizes) > 1 else 0
    return [f"image sizes: {listed}", f"  images whose size no other class has: {only}"]


def _leakage_lines(leak: dict[str, Any]) -> list[str]:
    titles = {"random": "random image-level split", "grouped_audit": "split grouped by audit groups",
              "grouped_existing": "split grouped by existing groups.csv"}
    lines = ["leakage: test images with a near-duplicate / same-group image in train (audit groups; existing groups)"]
    for name, r in leak.items():
        if "skipped" in r:
            lines.append(f"  {titles[name]:<38} skipped: {r['skipped']}")
            continue
        existing = f"; {r['same_existing_group_in_train']}" if "same_existing_group_in_train" in r else ""
        lines.append(f"  {titles[name]:<38} {r['near_duplicate_in_train']:>4} / {r['same_audit_group_in_train']}{existing}"
                     f" of {r['test_images']} test images")
    return lines


def _shortcut_lines(shortcuts: dict[str, dict[str, Any]]) -> list[str]:
    tasks = [t for t, _ in SHORTCUT_TASKS]
    lines = ["shortcut check, no anatomy (grouped CV; ROC-AUC for two classes, balanced accuracy for three):",
             f"  {'feature':<22}" + "".join(f"{t:>22}" for t in tasks)]
    for feature, scores in shortcuts.items():
        cells = [f"{s['value']:.3f}" if "value" in s else "n/a" for s in (scores[t] for t in tasks)]
        lines.append(f"  {feature:<22}" + "".join(f"{c:>22}" for c in cells))
    strong = [f"{f} ({t})" for f, scores in shortcuts.items() for t, s in scores.items()
              if s.get("metric") == "roc_auc" and s["value"] >= 0.8]
    if strong:
        lines.append(f"  warning: {', '.join(strong)} separate classes without anatomy (AUC >= 0.8): a model can shortcut")
    return lines


def resolve_out(root: Path, out: str | None, force: bool) -> Path:
    """Where groups.csv goes; never silently replaces the data set's own groups.csv."""
    path = Path(out) if out else root / GROUPS_FILE
    own = (root / GROUPS_FILE).resolve()
    if path.resolve() == own and own.is_file() and not force:
        raise LungCNNInputError(f"{own} already exists; pass --out OTHER.csv to write elsewhere, or --force to replace it")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lungcnn-audit", description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", help="folder with one subfolder per class (e.g. 'Bengin cases', 'Malignant cases')")
    p.add_argument("--out", help="groups.csv to write (default: DATA_DIR/groups.csv, only if it does not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing DATA_DIR/groups.csv")
    p.add_argument("--threshold", type=int, default=THRESHOLD, metavar="HAMMING_BITS",
                   help=f"near-duplicate: dHash distance <= this many of 64 bits (default {THRESHOLD})")
    p.add_argument("--series-threshold", type=int, default=SERIES_THRESHOLD, metavar="HAMMING_BITS",
                   help=f"link neighbouring file numbers within this distance (default {SERIES_THRESHOLD})")
    p.add_argument("--report", default="audit.json", help="JSON report to write (default ./audit.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and cross-validation (default 0)")
    p.add_argument("--folds", type=int, default=CV_FOLDS,
                   help=f"cross-validation folds of the shortcut check (default {CV_FOLDS})")
    return p


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.data_dir)
    out = resolve_out(root, args.out, args.force)
    frame, report = audit(root, threshold=args.threshold, series_threshold=args.series_threshold, seed=args.seed,
                          folds=args.folds)
    write_groups(frame, out)
    report["groups_csv"] = str(out)
    write_json(args.report, report)
    print(format_summary(report), flush=True)
    print(f"wrote {out} and {args.report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
