"""A small synthetic CT-like data set, so the demo runs on a fresh machine with no real data.

The images are drawn, not scanned: they are NOT medical data and say nothing about real lung cancer.
They only have to look enough like axial chest CT slices that the pipeline (reading, grouped splits,
training, calibration, the app) can be exercised end to end.

Layout written under ``root``::

    root/<class>/<class>_p<NNN>_s<SS>.png   8-bit grayscale ("L"), image_size x image_size, values 0..255
    root/groups.csv                         header ``file,label,group``; file relative to root, "/" separators
    root/SYNTHETIC.txt                      plain-words notice that the data is synthetic
    root/synthetic.json                     the generation parameters (used to make re-runs idempotent)

Pixel values (before noise): background (air outside the body) exactly 0, subcutaneous fat ~85,
soft tissue ~120, heart ~130, lung fields ~25 with faint texture and small vessels, lesions ~170-210
(a benign nodule may have a calcified core up to ~245), bone (ribs, sternum, spine) ~180-235.
Gaussian noise (sigma ~4-7, slightly correlated like CT grain) is added inside the body only.
Lesion sizes shrink by at most 30% across a patient's slices, so every lesion slice shows its lesion.

Classes: "normal" (no lesion), "benign" (1-2 small smooth round nodules, radius 3.5-6% of the image
size) and "malignant" (one larger lobulated, spiculated mass, radius 7.5-11.5% plus spikes, sometimes
touching the lung edge). One patient gives ``slices_per_patient`` near-identical slices (same
anatomy, small jitter, lesion size changing as through adjacent slices); the group column keeps a
patient's slices together so splits never leak a patient across train and test.

Everything is deterministic for a seed: each patient draws from ``np.random.default_rng([seed,
class code, patient])``, so the same parameters give byte-identical PNGs (on the same numpy/Pillow).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from lungcnn.errors import LungCNNInputError

# Bump when the drawing changes, so an old folder is not mistaken for the current data set.
GENERATOR_VERSION = 1

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


# ----------------------------------------------------------------------------------------------------
# Parameters, idempotency and the final rename


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


# ----------------------------------------------------------------------------------------------------
# Drawing. All geometry is in normalised image units (the image spans 0..1), so any image_size works.


@dataclass
class _Ellipse:
    cx: float
    cy: float
    a: float  # semi-axis along x before rotation
    b: float  # semi-axis along y before rotation
    angle: float = 0.0  # radians

    def alpha(self, x: np.ndarray, y: np.ndarray, px: float, grow: float = 0.0) -> np.ndarray:
        """Anti-aliased coverage in [0, 1]; `grow` pushes the edge outwards (normalised units)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (x - self.cx) * c + (y - self.cy) * s
        v = -(x - self.cx) * s + (y - self.cy) * c
        rn = np.sqrt((u / self.a) ** 2 + (v / self.b) ** 2)
        # Signed distance ~ (rn - 1) / |grad rn|: exact on the boundary, good enough for a 1-px ramp.
        grad = np.sqrt((u / self.a**2) ** 2 + (v / self.b**2) ** 2) / np.maximum(rn, 1e-9)
        dist = (rn - 1.0) / np.maximum(grad, 1e-9) - grow
        return np.clip(0.5 - dist / px, 0.0, 1.0)

    def radius(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised elliptical radius: 0 at the centre, 1 on the edge."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (x - self.cx) * c + (y - self.cy) * s
        v = -(x - self.cx) * s + (y - self.cy) * c
        return np.sqrt((u / self.a) ** 2 + (v / self.b) ** 2)

    def scaled(self, f: float) -> _Ellipse:
        return _Ellipse(self.cx, self.cy, self.a * f, self.b * f, self.angle)


@dataclass
class _Lesion:
    x: float
    y: float
    r: float
    intensity: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows: lobulation
    spikes: np.ndarray  # (angle, width, length) rows: spiculation, lengths in units of r
    core: float  # >0: bright calcified core (benign); <0: darker necrotic centre (malignant)
    z: np.ndarray  # per-slice size factor


@dataclass
class _Anatomy:
    body: _Ellipse
    fat: float
    muscle: float
    fat_int: float
    heart: _Ellipse
    heart_int: float
    aorta: _Ellipse
    lungs: tuple[_Ellipse, _Ellipse]
    lung_int: float
    lung_grow: np.ndarray  # per-slice lung scale (lungs change a little along z)
    ribs: list[tuple[_Ellipse, float]]
    spine: tuple[_Ellipse, _Ellipse, _Ellipse]  # vertebral body, canal, spinous process
    bone_int: float
    texture: np.ndarray  # (T, T) lung texture field over the unit square, incl. vessels
    noise: float


def render_patient(rng: np.random.Generator, cls: str, n_slices: int, size: int) -> list[np.ndarray]:
    """Draw one patient's `n_slices` adjacent slices as (size, size) uint8 arrays."""
    return [image for image, _, _ in _render_patient(rng, cls, n_slices, size)]


def _render_patient(rng: np.random.Generator, cls: str, n_slices: int, size: int):
    """Yield (image, lung coverage, lesion coverage) per slice; the masks let tests check the lesions."""
    anatomy = _sample_anatomy(rng, n_slices)  # drawn first and the same way for every class
    lesions = _sample_lesions(rng, cls, anatomy, n_slices)
    for k in range(n_slices):
        jitter = (rng.normal(0, 0.006), rng.normal(0, 0.006), 1.0 + rng.normal(0, 0.01))
        yield _render_slice(rng, anatomy, lesions, k, size, jitter)


def _sample_anatomy(rng: np.random.Generator, n_slices: int) -> _Anatomy:
    """One patient's body: size, aspect, position, organs, bone, lung texture and noise level."""
    a = rng.uniform(0.37, 0.46)
    b = a * rng.uniform(0.62, 0.82)
    cx = 0.5 + np.clip(rng.normal(0, 0.015), -0.03, 0.03)
    cy = 0.5 + np.clip(rng.normal(0, 0.015), -0.03, 0.03)
    body = _Ellipse(cx, cy, a, b)
    fat = rng.uniform(0.04, 0.09)

    lungs = []
    lx_off, ly_off = rng.uniform(0.47, 0.53), rng.uniform(0.0, 0.08)
    la, lb, tilt = rng.uniform(0.33, 0.38), rng.uniform(0.62, 0.72), rng.uniform(0.05, 0.25)
    for side in (-1.0, 1.0):
        asym = rng.uniform(0.95, 1.05)  # the two lungs are never quite the same
        lungs.append(
            _Ellipse(cx + side * a * lx_off, cy - b * ly_off, a * la * asym, b * lb * asym, side * tilt)
        )
    # The heart sits anteriorly, a little to the patient's left (image right), and cuts into the lungs.
    heart = _Ellipse(
        cx + a * rng.uniform(0.02, 0.1),
        cy - b * rng.uniform(-0.05, 0.1),
        a * rng.uniform(0.24, 0.3),
        b * rng.uniform(0.3, 0.38),
        rng.uniform(-0.4, 0.1),
    )
    spine_y = cy + b * rng.uniform(0.66, 0.72)
    vr = rng.uniform(0.05, 0.06)
    spine = (
        _Ellipse(cx, spine_y, vr * 1.05, vr * 0.9),
        _Ellipse(cx, spine_y + vr * 1.35, vr * 0.38, vr * 0.34),
        _Ellipse(cx, spine_y + vr * 2.0, vr * 0.3, vr * 0.55),
    )
    aorta = _Ellipse(cx + a * 0.12, spine_y - vr * 1.6, 0.028, 0.028)

    ribs = []
    depth = fat + 0.014  # ribs sit just inside the subcutaneous fat
    n_side = int(rng.integers(5, 8))
    for lo, hi in ((math.radians(125), math.radians(255)), (math.radians(285), math.radians(415))):
        for t in np.linspace(lo, hi, n_side) + rng.normal(0, 0.05, n_side):
            nx, ny = b * math.cos(t), a * math.sin(t)  # outward normal of the body ellipse
            norm = math.hypot(nx, ny)
            x = cx + a * math.cos(t) - depth * nx / norm
            y = cy + b * math.sin(t) - depth * ny / norm
            tangent = math.atan2(ny, nx) + math.pi / 2
            ribs.append(
                (
                    _Ellipse(x, y, rng.uniform(0.014, 0.022), rng.uniform(0.006, 0.009), tangent),
                    rng.uniform(195, 235),
                )
            )
    ribs.append((_Ellipse(cx, cy - b + depth, 0.028, 0.011), rng.uniform(190, 225)))  # sternum

    # Lung texture: smooth low-frequency mottling plus small bright vessel cross-sections.
    t = 96
    tex = 4.0 * _smooth_noise(rng, t, 6) + 2.5 * _smooth_noise(rng, t, 14)
    gy, gx = (np.mgrid[0:t, 0:t] + 0.5) / t
    for lung in lungs:
        for _ in range(int(rng.integers(18, 30))):
            # Vessels are denser and thicker towards the hilum (medially).
            rho, phi = math.sqrt(rng.uniform(0.0, 1.0)) * 0.95, rng.uniform(0, 2 * math.pi)
            vx = lung.cx + lung.a * rho * math.cos(phi)
            vy = lung.cy + lung.b * rho * math.sin(phi)
            medial = 1.0 - min(abs(vx - cx) / (a * 0.8), 1.0)
            sigma = rng.uniform(0.003, 0.006) * (1.0 + 1.2 * medial)
            amp = rng.uniform(30, 65)
            tex += amp * np.exp(-((gx - vx) ** 2 + (gy - vy) ** 2) / (2 * sigma**2))
    n_grow = rng.uniform(-0.05, 0.05)
    steps = np.linspace(-0.5, 0.5, n_slices) if n_slices > 1 else np.zeros(1)
    return _Anatomy(
        body=body,
        fat=fat,
        muscle=rng.uniform(112, 128),
        fat_int=rng.uniform(78, 92),
        heart=heart,
        heart_int=rng.uniform(126, 138),
        aorta=aorta,
        lungs=(lungs[0], lungs[1]),
        lung_int=rng.uniform(18, 32),
        lung_grow=1.0 + n_grow * steps,
        ribs=ribs,
        spine=spine,
        bone_int=rng.uniform(205, 235),
        texture=tex,
        noise=rng.uniform(4.0, 7.0),
    )


def _sample_lesions(rng: np.random.Generator, cls: str, anatomy: _Anatomy, n_slices: int) -> list[_Lesion]:
    """The class-specific part: none (normal), small smooth nodules (benign) or a spiculated mass."""
    if cls == "normal":
        return []
    steps = np.linspace(-0.5, 0.5, n_slices) if n_slices > 1 else np.zeros(1)
    lesions: list[_Lesion] = []
    count = 1 if cls == "malignant" else int(rng.choice([1, 2], p=[0.6, 0.4]))
    for _ in range(count):
        # Where along z the slices cut the lesion: size factor sqrt(1 - z^2), never below 0.7.
        z = rng.uniform(-0.2, 0.2) + steps * rng.uniform(0.4, 0.9)
        zf = np.sqrt(np.clip(1.0 - z**2, 0.49, 1.0))
        lung = anatomy.lungs[int(rng.integers(0, 2))]
        if cls == "benign":
            r = rng.uniform(0.035, 0.06)
            edge = rng.uniform(0.0, 0.55)
            for _ in range(20):  # a second nodule stays apart from the first, or it reads as one mass
                x, y = _point_in_lung(rng, anatomy, lung, edge, r)
                if all(math.hypot(x - o.x, y - o.y) > r + o.r + 0.03 for o in lesions):
                    break
                lung, edge = anatomy.lungs[int(rng.integers(0, 2))], rng.uniform(0.0, 0.55)
            lesions.append(
                _Lesion(
                    x,
                    y,
                    r,
                    rng.uniform(175, 210),
                    np.zeros((0, 3)),
                    np.zeros((0, 3)),
                    core=rng.uniform(220, 245) if rng.random() < 0.3 else 0.0,
                    z=zf,
                )
            )
        else:
            r = rng.uniform(0.075, 0.115)
            # Sometimes the mass reaches the pleura; it is then clipped by the lung edge.
            edge = rng.uniform(0.55, 0.75) if rng.random() < 0.35 else rng.uniform(0.0, 0.4)
            # Kept off the heart: a mass merged with the mediastinum would be too hard for a tiny demo.
            x, y = _point_in_lung(rng, anatomy, lung, edge, 0.7 * r)
            ks = np.arange(2, 6)
            harmonics = np.stack(
                [ks, rng.uniform(0.02, 0.1, ks.size) / np.sqrt(ks - 1), rng.uniform(0, 2 * np.pi, ks.size)],
                axis=1,
            )
            n_spikes = int(rng.integers(6, 13))
            spikes = np.stack(
                [
                    rng.uniform(0, 2 * np.pi, n_spikes),
                    rng.uniform(0.04, 0.09, n_spikes),
                    rng.uniform(0.25, 0.8, n_spikes),
                ],
                axis=1,
            )
            core = -rng.uniform(25, 45) if rng.random() < 0.25 else 0.0
            lesions.append(_Lesion(x, y, r, rng.uniform(170, 200), harmonics, spikes, core, zf))
    return lesions


def _point_in_lung(rng: np.random.Generator, anatomy: _Anatomy, lung: _Ellipse, edge: float, margin: float):
    """A lesion centre at normalised radius ~`edge` in `lung`, clear of the heart by `margin`."""
    for _ in range(200):
        rho = abs(edge + rng.uniform(-0.1, 0.1))
        phi = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(lung.angle), math.sin(lung.angle)
        u, v = lung.a * rho * math.cos(phi), lung.b * rho * math.sin(phi)
        x, y = lung.cx + u * c - v * s, lung.cy + u * s + v * c
        heart = anatomy.heart
        clear = heart.radius(np.array(x), np.array(y)) > 1.0 + margin / min(heart.a, heart.b)
        chest = anatomy.body.alpha(np.array(x), np.array(y), 1e-3, grow=-(anatomy.fat + 0.05)) > 0.5
        if rho <= 0.9 and clear and chest:
            return x, y
    return lung.cx, lung.cy


def _render_slice(rng, anatomy: _Anatomy, lesions: list[_Lesion], k: int, size: int, jitter):
    """Compose one slice: body, organs, lungs, lesions, bone, then noise inside the body."""
    px = 1.0 / size
    dx, dy, scale = jitter
    g = (np.arange(size) + 0.5) / size
    # Patient coordinates of each pixel: the whole patient shifts and scales a little per slice.
    c = 0.5
    x = c + (g[None, :] - c - dx) / scale
    y = c + (g[:, None] - c - dy) / scale
    x, y = np.broadcast_to(x, (size, size)), np.broadcast_to(y, (size, size))
    px = px / scale

    body = anatomy.body
    body_a = body.alpha(x, y, px)
    inner = body.alpha(x, y, px, grow=-anatomy.fat)
    img = anatomy.fat_int + (anatomy.muscle - anatomy.fat_int) * inner
    img = _blend(img, anatomy.heart_int, anatomy.heart.alpha(x, y, px))
    img = _blend(img, anatomy.heart_int + 8, anatomy.aorta.alpha(x, y, px))

    grow = anatomy.lung_grow[k]
    heart_cut = 1.0 - anatomy.heart.alpha(x, y, px, grow=0.012)
    lung_a = np.maximum(
        anatomy.lungs[0].scaled(grow).alpha(x, y, px), anatomy.lungs[1].scaled(grow).alpha(x, y, px)
    )
    # The pleura follows the inside of the chest wall: lungs never reach the ribs or the fat.
    chest = body.alpha(x, y, px, grow=-(anatomy.fat + 0.032))
    lung_a = lung_a * heart_cut * chest
    lung_val = anatomy.lung_int + _sample(anatomy.texture, x, y)
    img = _blend(img, lung_val, lung_a)

    lesion_a = np.zeros((size, size))
    # Lesions stay in the lung, allowing a couple of pixels for a mass pressed against the pleura.
    lung_room = (
        np.maximum(
            anatomy.lungs[0].scaled(grow).alpha(x, y, px, grow=0.01),
            anatomy.lungs[1].scaled(grow).alpha(x, y, px, grow=0.01),
        )
        * heart_cut
        * body.alpha(x, y, px, grow=-(anatomy.fat + 0.025))
    )
    for lesion in lesions:
        a, val = _lesion_alpha(lesion, k, x, y, px)
        a = a * lung_room
        img = _blend(img, val, a)
        lesion_a = np.maximum(lesion_a, a)

    for rib, value in anatomy.ribs:
        img = _blend(img, value, rib.alpha(x, y, px))
    vertebra, canal, process = anatomy.spine
    img = _blend(img, anatomy.bone_int, np.maximum(vertebra.alpha(x, y, px), process.alpha(x, y, px)))
    img = _blend(img, anatomy.bone_int - 25, vertebra.alpha(x, y, px, grow=-0.012))  # marrow inside cortex
    img = _blend(img, anatomy.muscle - 40, canal.alpha(x, y, px))

    noise = _blur(rng.normal(0.0, 1.0, (size, size)), 0.6 * size / 128)
    noise *= anatomy.noise / max(float(noise.std()), 1e-6)
    img = (img + noise) * body_a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lung_a, lesion_a


def _lesion_alpha(lesion: _Lesion, k: int, x: np.ndarray, y: np.ndarray, px: float):
    """Coverage and intensity of a lesion on slice k: round for nodules, lobulated with spikes for masses."""
    r = lesion.r * lesion.z[k]
    u, v = x - lesion.x, y - lesion.y
    d = np.sqrt(u**2 + v**2)
    theta = np.arctan2(v, u)
    edge = np.ones_like(d)
    for kk, amp, phase in lesion.harmonics:
        edge += amp * np.cos(kk * theta + phase)
    for angle, width, length in lesion.spikes:
        diff = np.angle(np.exp(1j * (theta - angle)))
        edge += length * np.exp(-((diff / width) ** 2))
    edge *= r
    alpha = np.clip((edge - d) / px + 0.5, 0.0, 1.0)
    # Spikes are thinner and fainter than the body of the mass.
    fade = np.clip(1.15 - 0.45 * (d / r - 0.8), 0.55, 1.0)
    alpha = alpha * fade
    val = np.full_like(d, lesion.intensity)
    if lesion.core > 0:  # calcified centre of a benign nodule
        val = _blend(val, lesion.core, np.clip((0.45 * r - d) / px + 0.5, 0.0, 1.0))
    elif lesion.core < 0:  # necrotic, darker centre of a mass
        val = val + lesion.core * np.clip(1.0 - d / (0.45 * r), 0.0, 1.0)
    return alpha, val


def _blend(img, value, alpha):
    return img + (value - img) * alpha


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish smooth noise on a (size, size) grid over the unit square."""
    coarse = rng.normal(0.0, 1.0, (cells + 1, cells + 1))
    g = (np.arange(size) + 0.5) / size
    return _sample(
        coarse,
        np.broadcast_to(g[None, :], (size, size)),
        np.broadcast_to(g[:, None], (size, size)),
        edge_aligned=True,
    )


def _sample(field: np.ndarray, x: np.ndarray, y: np.ndarray, edge_aligned: bool = False) -> np.ndarray:
    """Bilinear lookup of `field` (covering the unit square) at normalised coordinates x, y."""
    h, w = field.shape
    if edge_aligned:  # field values sit on the corners of a (h-1) x (w-1) grid
        fx, fy = x * (w - 1), y * (h - 1)
    else:  # field values sit on pixel centres
        fx, fy = x * w - 0.5, y * h - 0.5
    fx, fy = np.clip(fx, 0, w - 1), np.clip(fy, 0, h - 1)
    x0, y0 = np.minimum(fx.astype(int), w - 2), np.minimum(fy.astype(int), h - 2)
    tx, ty = fx - x0, fy - y0
    top = field[y0, x0] * (1 - tx) + field[y0, x0 + 1] * tx
    bottom = field[y0 + 1, x0] * (1 - tx) + field[y0 + 1, x0 + 1] * tx
    return top * (1 - ty) + bottom * ty


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (numpy only; used to give the noise CT-like grain)."""
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(img, radius, mode="reflect")
    h, w = img.shape
    rows = sum(kv * padded[:, i : i + w] for i, kv in enumerate(kernel))
    return sum(kv * rows[i : i + h, :] for i, kv in enumerate(kernel))


# ----------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lungcnn.data.synthetic OUT_DIR``: write the demo data set and say what was written."""
    parser = argparse.ArgumentParser(
        prog="python -m lungcnn.data.synthetic",
        description="Write the synthetic CT-like demo data set (drawn images, NOT medical data).",
    )
    parser.add_argument("out_dir", help="folder to create (must be new, empty, or an earlier synthetic set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic data set")
    args = parser.parse_args(argv)
    try:
        root = make_synthetic_dataset(
            os.path.abspath(args.out_dir),
            seed=args.seed,
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    except LungCNNInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(root / GROUPS_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    images: dict[str, int] = {}
    patients: dict[str, set[str]] = {}
    for row in rows:
        images[row["label"]] = images.get(row["label"], 0) + 1
        patients.setdefault(row["label"], set()).add(row["group"])
    print(f"synthetic data set (not medical data) in {root}")
    for label, n in images.items():
        print(f"  {label}: {n} images from {len(patients[label])} patients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
