"""The audit of one data folder: find and fingerprint its images, run every check, write groups.csv."""

from __future__ import annotations

import csv
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.data.audit.hashing import duplicate_sets, intensity_histogram, n_pairs, near_duplicate_pairs, perceptual_hash
from lungcnn.data.audit.leakage import leakage
from lungcnn.data.audit.series import components, group_names, links_within, mixed_label_groups, series_links
from lungcnn.data.audit.shortcuts import CV_FOLDS, shortcut_check
from lungcnn.data.catalog import scan_folder
from lungcnn.data.io import read_image
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


def resolve_out(root: Path, out: str | None, force: bool) -> Path:
    """Where groups.csv goes; never silently replaces the data set's own groups.csv."""
    path = Path(out) if out else root / GROUPS_FILE
    own = (root / GROUPS_FILE).resolve()
    if path.resolve() == own and own.is_file() and not force:
        raise LungCNNInputError(f"{own} already exists; pass --out OTHER.csv to write elsewhere, or --force to replace it")
    return path


def audit_folder(data_dir: str | Path, *, out: str | None = None, force: bool = False, report: str | Path = "audit.json",
                 threshold: int = THRESHOLD, series_threshold: int = SERIES_THRESHOLD, seed: int = 0,
                 folds: int = CV_FOLDS) -> dict[str, Any]:
    """Audit `data_dir`, write its groups.csv (`out`, see `resolve_out`) and the JSON `report`; return the report."""
    root = Path(data_dir)
    groups_csv = resolve_out(root, out, force)  # before the work: refuse to replace a groups.csv up front
    frame, result = audit(root, threshold=threshold, series_threshold=series_threshold, seed=seed, folds=folds)
    write_groups(frame, groups_csv)
    result["groups_csv"] = str(groups_csv)
    write_json(report, result)
    return result
