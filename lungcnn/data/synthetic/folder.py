"""Writing the synthetic demo data set to a folder: class folders, groups.csv, notice, parameters.

The folder is built in a temporary sibling and renamed into place; re-runs with the same parameters
are no-ops, and only an earlier synthetic set (never a foreign folder) is ever replaced.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from lungcnn.data.synthetic.phantom import GENERATOR_VERSION, render_patient
from lungcnn.errors import LungCNNInputError

DEFAULT_N_PATIENTS: Mapping[str, int] = MappingProxyType({"benign": 8, "malignant": 16})
# Stable codes (not dict order) seed each class, so adding a class never changes the others' images.
CLASS_CODES: Mapping[str, int] = MappingProxyType({"normal": 0, "benign": 1, "malignant": 2})

NOTICE_FILE = "SYNTHETIC.txt"
PARAMS_FILE = "synthetic.json"
GROUPS_FILE = "groups.csv"

NOTICE = """\
SYNTHETIC DATA - NOT MEDICAL DATA

Every image in this folder was drawn by a computer program (lungcnn.data.synthetic) from random
numbers. None of it comes from a patient or a scanner. The "benign" and "malignant" labels are
names for two kinds of drawn blobs; they say nothing about real lung nodules or cancer.

Use it only to try out the lungcnn software. A model trained on it is useless for diagnosis.

Generation parameters:
"""


def make_synthetic_dataset(
    root: str | os.PathLike,
    *,
    n_patients: Mapping[str, int] = DEFAULT_N_PATIENTS,
    slices_per_patient: int = 6,
    image_size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic data set to `root` and return `root` as a Path.

    Idempotent: if `root` already holds a complete data set made with the same parameters it is
    returned untouched. A non-empty folder that is anything else raises `LungCNNInputError`;
    `overwrite=True` replaces an earlier synthetic data set but never a foreign folder, so a wrong
    path cannot delete someone's files. The set is built in a temporary sibling folder and renamed
    into place, so a crash never leaves a half-written folder that looks complete.
    """
    params = _check_params(n_patients, slices_per_patient, image_size, seed)
    given = Path(root)
    root = Path(os.path.abspath(given))  # "." or "a/.." must name the real folder for the rename
    if root.exists() and not root.is_dir():
        raise LungCNNInputError(f"{root}: exists and is not a folder; choose a folder for the synthetic data")
    existing = root.is_dir() and any(root.iterdir())
    if existing:
        if _is_complete(root, params):
            if not overwrite:
                return given
        elif not _is_synthetic(root):
            raise LungCNNInputError(
                f"{root}: folder is not empty and is not a synthetic data set; "
                "choose an empty or new folder (overwrite=True only replaces an earlier synthetic data set)"
            )
        elif not overwrite:
            raise LungCNNInputError(
                f"{root}: holds a synthetic data set made with other parameters (or an incomplete one); "
                "pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )

    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes a private (0700) folder; the data set is built one level down so that it gets
    # the usual umask permissions when renamed into place.
    holder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{root.name}.tmp-"))
    try:
        build = holder / "build"
        build.mkdir()
        _write_dataset(build, params)
        _move_into_place(build, root, params)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return given


def _check_params(n_patients: Mapping[str, int], slices: int, size: int, seed: int) -> dict:
    """Validate the arguments and return them as the JSON-able dict stored in synthetic.json."""
    if not isinstance(n_patients, Mapping) or not n_patients:
        raise LungCNNInputError("n_patients must be a non-empty mapping like {'benign': 8, 'malignant': 16}")
    for cls, n in n_patients.items():
        if cls not in CLASS_CODES:
            raise LungCNNInputError(
                f"unknown synthetic class {cls!r}; expected some of {sorted(CLASS_CODES)}"
            )
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 10_000:
            raise LungCNNInputError(f"n_patients[{cls!r}] must be an integer in 1..10000, got {n!r}")
    for name, value, low, high in (("slices_per_patient", slices, 1, 1000), ("image_size", size, 32, 2048)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise LungCNNInputError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LungCNNInputError(f"seed must be a non-negative integer, got {seed!r}")
    return {
        "generator_version": GENERATOR_VERSION,
        # A list keeps the class order, which decides the row order of groups.csv.
        "n_patients": [[str(cls), int(n)] for cls, n in n_patients.items()],
        "slices_per_patient": int(slices),
        "image_size": int(size),
        "seed": int(seed),
    }


def _is_synthetic(root: Path) -> bool:
    return (root / NOTICE_FILE).is_file() or (root / PARAMS_FILE).is_file()


def _is_complete(root: Path, params: dict) -> bool:
    """True if `root` holds a data set with exactly these parameters and every listed image exists."""
    try:
        stored = json.loads((root / PARAMS_FILE).read_text(encoding="utf-8"))
        if stored != params or not (root / NOTICE_FILE).is_file():
            return False
        with open(root / GROUPS_FILE, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError):
        return False
    expected = sum(n for _, n in params["n_patients"]) * params["slices_per_patient"]
    return len(rows) == expected and all((root / row["file"]).is_file() for row in rows)


def _move_into_place(tmp: Path, root: Path, params: dict) -> None:
    """Rename the finished temporary folder to `root`, replacing an empty or earlier synthetic folder."""
    if root.is_dir() and not any(root.iterdir()):
        # Fill the existing folder rather than replace it (it may be someone's working directory);
        # synthetic.json goes last, so an interrupted move is seen as incomplete.
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == PARAMS_FILE):
            os.replace(entry, root / entry.name)
        return
    if not root.exists():
        try:
            os.replace(tmp, root)
            return
        except OSError:
            # Another process finished first; fine if it wrote the same thing.
            if _is_complete(root, params):
                return
            raise
    # overwrite=True over an earlier synthetic set: move the old one aside, swap, then delete it.
    trash = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
    try:
        os.replace(root, trash / "old")
        os.replace(tmp, root)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _write_dataset(out: Path, params: dict) -> None:
    """Draw every patient and write PNGs, groups.csv and the notices into `out`."""
    size, slices, seed = params["image_size"], params["slices_per_patient"], params["seed"]
    rows = []
    for cls, n in params["n_patients"]:
        (out / cls).mkdir()
        for p in range(n):
            group = f"{cls}_p{p:03d}"
            rng = np.random.default_rng([seed, CLASS_CODES[cls], p])
            for s, image in enumerate(render_patient(rng, cls, slices, size)):
                rel = f"{cls}/{group}_s{s:02d}.png"
                Image.fromarray(image).save(out / rel, format="PNG")
                rows.append((rel, cls, group))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("file", "label", "group"))
    writer.writerows(rows)
    (out / GROUPS_FILE).write_text(buf.getvalue(), encoding="utf-8")
    params_json = json.dumps(params, indent=2, sort_keys=True) + "\n"
    (out / NOTICE_FILE).write_text(NOTICE + params_json, encoding="utf-8")
    # Written last: its presence (with groups.csv complete) is what marks the set as finished.
    (out / PARAMS_FILE).write_text(params_json, encoding="utf-8")


def summary(root: str | os.PathLike) -> str:
    """What a synthetic set in `root` holds: images and patients per class, one line each."""
    with open(Path(root) / GROUPS_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    images: dict[str, int] = {}
    patients: dict[str, set[str]] = {}
    for row in rows:
        images[row["label"]] = images.get(row["label"], 0) + 1
        patients.setdefault(row["label"], set()).add(row["group"])
    lines = [f"synthetic data set (not medical data) in {root}"]
    lines += [f"  {label}: {n} images from {len(patients[label])} patients" for label, n in images.items()]
    return "\n".join(lines)
