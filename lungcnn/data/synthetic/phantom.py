"""Drawing one synthetic patient: anatomy, class-specific lesions, and its adjacent slices.

All geometry is in normalised image units (the image spans 0..1), so any image size works. The images
are drawn, not scanned: NOT medical data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lungcnn.data.synthetic.shapes import Ellipse, bilinear, blend, blur, smooth_noise

# Bump when the drawing changes, so an old folder is not mistaken for the current data set.
GENERATOR_VERSION = 1


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
    body: Ellipse
    fat: float
    muscle: float
    fat_int: float
    heart: Ellipse
    heart_int: float
    aorta: Ellipse
    lungs: tuple[Ellipse, Ellipse]
    lung_int: float
    lung_grow: np.ndarray  # per-slice lung scale (lungs change a little along z)
    ribs: list[tuple[Ellipse, float]]
    spine: tuple[Ellipse, Ellipse, Ellipse]  # vertebral body, canal, spinous process
    bone_int: float
    texture: np.ndarray  # (T, T) lung texture field over the unit square, incl. vessels
    noise: float


def render_patient(rng: np.random.Generator, cls: str, n_slices: int, size: int) -> list[np.ndarray]:
    """Draw one patient's `n_slices` adjacent slices as (size, size) uint8 arrays."""
    return [image for image, _, _ in render_patient_with_masks(rng, cls, n_slices, size)]


def render_patient_with_masks(rng: np.random.Generator, cls: str, n_slices: int, size: int):
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
    body = Ellipse(cx, cy, a, b)
    fat = rng.uniform(0.04, 0.09)

    lungs = []
    lx_off, ly_off = rng.uniform(0.47, 0.53), rng.uniform(0.0, 0.08)
    la, lb, tilt = rng.uniform(0.33, 0.38), rng.uniform(0.62, 0.72), rng.uniform(0.05, 0.25)
    for side in (-1.0, 1.0):
        asym = rng.uniform(0.95, 1.05)  # the two lungs are never quite the same
        lungs.append(
            Ellipse(cx + side * a * lx_off, cy - b * ly_off, a * la * asym, b * lb * asym, side * tilt)
        )
    # The heart sits anteriorly, a little to the patient's left (image right), and cuts into the lungs.
    heart = Ellipse(
        cx + a * rng.uniform(0.02, 0.1),
        cy - b * rng.uniform(-0.05, 0.1),
        a * rng.uniform(0.24, 0.3),
        b * rng.uniform(0.3, 0.38),
        rng.uniform(-0.4, 0.1),
    )
    spine_y = cy + b * rng.uniform(0.66, 0.72)
    vr = rng.uniform(0.05, 0.06)
    spine = (
        Ellipse(cx, spine_y, vr * 1.05, vr * 0.9),
        Ellipse(cx, spine_y + vr * 1.35, vr * 0.38, vr * 0.34),
        Ellipse(cx, spine_y + vr * 2.0, vr * 0.3, vr * 0.55),
    )
    aorta = Ellipse(cx + a * 0.12, spine_y - vr * 1.6, 0.028, 0.028)

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
                    Ellipse(x, y, rng.uniform(0.014, 0.022), rng.uniform(0.006, 0.009), tangent),
                    rng.uniform(195, 235),
                )
            )
    ribs.append((Ellipse(cx, cy - b + depth, 0.028, 0.011), rng.uniform(190, 225)))  # sternum

    # Lung texture: smooth low-frequency mottling plus small bright vessel cross-sections.
    t = 96
    tex = 4.0 * smooth_noise(rng, t, 6) + 2.5 * smooth_noise(rng, t, 14)
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


def _point_in_lung(rng: np.random.Generator, anatomy: _Anatomy, lung: Ellipse, edge: float, margin: float):
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
    img = blend(img, anatomy.heart_int, anatomy.heart.alpha(x, y, px))
    img = blend(img, anatomy.heart_int + 8, anatomy.aorta.alpha(x, y, px))

    grow = anatomy.lung_grow[k]
    heart_cut = 1.0 - anatomy.heart.alpha(x, y, px, grow=0.012)
    lung_a = np.maximum(
        anatomy.lungs[0].scaled(grow).alpha(x, y, px), anatomy.lungs[1].scaled(grow).alpha(x, y, px)
    )
    # The pleura follows the inside of the chest wall: lungs never reach the ribs or the fat.
    chest = body.alpha(x, y, px, grow=-(anatomy.fat + 0.032))
    lung_a = lung_a * heart_cut * chest
    lung_val = anatomy.lung_int + bilinear(anatomy.texture, x, y)
    img = blend(img, lung_val, lung_a)

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
        img = blend(img, val, a)
        lesion_a = np.maximum(lesion_a, a)

    for rib, value in anatomy.ribs:
        img = blend(img, value, rib.alpha(x, y, px))
    vertebra, canal, process = anatomy.spine
    img = blend(img, anatomy.bone_int, np.maximum(vertebra.alpha(x, y, px), process.alpha(x, y, px)))
    img = blend(img, anatomy.bone_int - 25, vertebra.alpha(x, y, px, grow=-0.012))  # marrow inside cortex
    img = blend(img, anatomy.muscle - 40, canal.alpha(x, y, px))

    noise = blur(rng.normal(0.0, 1.0, (size, size)), 0.6 * size / 128)
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
        val = blend(val, lesion.core, np.clip((0.45 * r - d) / px + 0.5, 0.0, 1.0))
    elif lesion.core < 0:  # necrotic, darker centre of a mass
        val = val + lesion.core * np.clip(1.0 - d / (0.45 * r), 0.0, 1.0)
    return alpha, val

