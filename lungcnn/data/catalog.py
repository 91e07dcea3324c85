"""Find the labelled images under a data root: one folder per class, optional `groups.csv`.

The class map is configuration: `class_folders` maps a folder name to a class name, `class_names`
gives the label order (index = label; for the binary task the last class is the positive one), and
`normal_as` says what happens to a folder mapped to "normal":
- ``drop``: left out (the paper's benign-vs-malignant setting);
- ``negative``: label 0 (normal counts as not malignant);
- ``class``: its own class (three-class mode; "normal" must be in `class_names`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from lungcnn.data.io import is_supported
from lungcnn.errors import LungCNNInputError, fail, require_choice

NORMAL = "normal"
NORMAL_AS = ("drop", "negative", "class")
COLUMNS = ["file", "label", "class_name", "group"]


def scan_folder(
    root: str | Path,
    class_folders: dict[str, str],
    class_names: list[str],
    normal_as: str = "drop",
    groups_file: str | Path | None = "groups.csv",
    require_all_classes: bool = True,
) -> pd.DataFrame:
    """One row per image: file (relative to root, '/'-separated), label, class_name, group.

    `require_all_classes=False` lets a folder hold only some classes (one source of several, e.g. normal scans)."""
    root = Path(root)
    check_class_map(class_folders, class_names, normal_as)
    if not root.is_dir():
        raise LungCNNInputError(f"data folder not found: {root} (set data.root=/path/to/data)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not folders:
        raise LungCNNInputError(f"{root}: no class folders found; expected one folder per class, e.g. {sorted(class_folders)}")
    rows = []
    for folder in folders:
        if folder.name not in class_folders:
            raise LungCNNInputError(
                f"{folder}: unknown class folder {folder.name!r}; known folders (data.class_folders): {sorted(class_folders)}"
            )
        class_name = class_folders[folder.name]
        label = _label_of(class_name, class_names, normal_as)
        if label is None:
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_supported(p))
        if not files:
            raise LungCNNInputError(f"{folder}: class folder has no images (JPEG, PNG, BMP, TIFF or DICOM)")
        if class_name == NORMAL and normal_as == "negative":
            class_name = class_names[0]
        rows += [(p.relative_to(root).as_posix(), label, class_name) for p in files]
    frame = pd.DataFrame(rows, columns=COLUMNS[:3])
    missing = sorted(set(range(len(class_names))) - set(frame["label"]))
    if missing and require_all_classes:
        raise LungCNNInputError(
            f"{root}: no images for class(es) {[class_names[i] for i in missing]}; check data.class_folders"
        )
    frame["group"] = _groups(root, frame, groups_file)
    return frame


def check_class_map(class_folders: Mapping[str, str], class_names: Sequence[str], normal_as: str) -> None:
    """data.class_folders, data.class_names and data.normal_as as `scan_folder` needs them (the data module
    calls this on construction, before any folder is read)."""
    if (isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) < 2
            or not all(isinstance(n, str) and n for n in class_names) or len(set(class_names)) != len(class_names)):
        fail("data.class_names", "a list of at least 2 unique, non-empty names", class_names)
    if (not isinstance(class_folders, Mapping) or not class_folders
            or not all(isinstance(v, str) and v for v in class_folders.values())):
        fail("data.class_folders", "a non-empty mapping folder name -> class name", class_folders)
    require_choice("data.normal_as", normal_as, NORMAL_AS)
    if normal_as == "class" and NORMAL not in class_names:
        raise LungCNNInputError(f"data.normal_as=class needs {NORMAL!r} in data.class_names, got {list(class_names)}")


def _label_of(class_name: str, class_names: list[str], normal_as: str) -> int | None:
    if class_name == NORMAL and normal_as != "class":
        return None if normal_as == "drop" else 0
    if class_name not in class_names:
        raise LungCNNInputError(f"class {class_name!r} is not in data.class_names {class_names}")
    return class_names.index(class_name)


def _groups(root: Path, frame: pd.DataFrame, groups_file: str | Path | None) -> list[str]:
    """Series group per image from `groups.csv` (file,label,group); an image without one is its own group."""
    own = [f"file:{f}" for f in frame["file"]]
    if groups_file is None:
        return own
    path = root / groups_file
    if not path.is_file():
        return own
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file", "group"} <= set(reader.fieldnames):
            raise LungCNNInputError(f"{path}: expected columns file,label,group; got {reader.fieldnames}")
        known = {row["file"].replace("\\", "/"): row["group"] for row in reader}
    return [known.get(f, default) for f, default in zip(frame["file"], own, strict=False)]
