"""Synthetic masses inserted into the lung fields of real CT slices: lesions whose place is known to the pixel.

No shared source says where its tumours are, except one annotated patient kept for evaluation, and IQ-OTH/NCCD labels
whole cases. A normal slice with a mass drawn into its lung field is a training example whose label is exact down
to the tile, and whose anatomy is the same as the unchanged slice's: what separates the pair is the mass alone, not
the source, the scanner or the level in the chest (docs/results/synthetic-masses.md measures what a tile classifier
learns from such pairs).

A mass is drawn in the image's own rendering, so it looks like soft tissue in whatever window the slice was exported
in: its grey level is a high percentile of the slice's own soft tissue (the body outside the lungs' hulls), its grain
the slice's own high-pass noise. Its outline is a circle of radius r perturbed by five random harmonics (lobulated),
and some masses get thin spicules. Vessels in front of it stay visible.

Input: (H, W) uint8, as rendered for the model (any window); output the same shape and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lungcnn.data.lungcrop import LungFields, find_lung_fields, lung_region

SOFT_TISSUE_PERCENTILE = 70  # muscle and the heart are brighter than fat in every soft-tissue-like window
MIN_SOFT_PIXELS = 500  # fewer soft-tissue pixels than this (a tiny or odd body): use the whole body's


@dataclass(frozen=True)
class Mass:
    """Where a mass was drawn: its centre (x, y) in pixels, its nominal radius and its (H, W) bool mask."""

    centre: tuple[int, int]
    radius: float
    mask: np.ndarray


def insert_mass(
    image: np.ndarray,
    rng: np.random.Generator,
    radius: tuple[float, float] = (6.0, 40.0),
    min_inside: float = 0.7,
    spiculated: float = 0.4,
    fields: LungFields | None = None,
    tries: int = 50,
) -> tuple[np.ndarray, Mass] | None:
    """`image` with one mass in a lung field, and where it is; None when no lungs are found or no place fits.

    Args:
        image: (H, W) uint8 slice in any display window.
        rng: the only source of randomness (the same generator state gives the same mass).
        radius: (low, high) of the nominal radius in pixels, drawn uniformly.
        min_inside: least share of the mass inside the lungs' hulls (`lungcrop.lung_region`); its centre always
            lies in a lung field.
        spiculated: probability of drawing 3-8 spicules.
        fields: the slice's lung fields when already known (else found here).
        tries: placements to try before giving up.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"insert_mass needs an (H, W) uint8 image, got shape {image.shape} dtype {image.dtype}")
    if not 0 < radius[0] <= radius[1]:
        raise ValueError(f"radius must be (low, high) with 0 < low <= high, got {radius}")
    if not 0 < min_inside <= 1 or not 0 <= spiculated <= 1:
        raise ValueError(f"min_inside must be in (0, 1] and spiculated in [0, 1], got {min_inside}, {spiculated}")
    fields = find_lung_fields(image) if fields is None else fields
    if not fields.found:
        return None
    region = lung_region(fields)
    placed = _place(fields.lungs, region, rng, radius, min_inside, tries)
    if placed is None:
        return None
    (cx, cy), r, mask = placed
    g = image.astype(np.float32)
    soft = cv2.erode((fields.body & ~region).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    enough = soft.sum() > MIN_SOFT_PIXELS
    level = np.percentile(g[soft] if enough else g[fields.body], SOFT_TISSUE_PERCENTILE) * rng.uniform(0.9, 1.1)
    noise = (g - cv2.GaussianBlur(g, (0, 0), 2))[soft].std() if enough else 8.0
    grain = cv2.GaussianBlur(rng.normal(0, 1, image.shape).astype(np.float32), (0, 0), 0.7)
    grain = grain / (grain.std() + 1e-6) * noise
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(0.7, 2.0))
    if rng.random() < spiculated:
        alpha = np.maximum(alpha, _spicules(image.shape, cx, cy, r, rng) * region)
    out = g * (1 - alpha) + np.clip(level + grain, 0, 255) * alpha
    out = np.maximum(out, g * (alpha > 0.5))  # vessels in front of the mass stay visible
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), Mass((int(cx), int(cy)), float(r), mask)


def _place(lungs, region, rng, radius, min_inside, tries):
    """A lobulated outline centred in a lung field with `min_inside` of it in `region`, or None after `tries`."""
    ys, xs = np.nonzero(lungs)
    yy, xx = np.mgrid[: lungs.shape[0], : lungs.shape[1]]
    for _ in range(tries):
        k = rng.integers(len(ys))
        cy, cx = ys[k], xs[k]
        r = rng.uniform(*radius)
        angle, distance = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
        outline = np.full_like(angle, r)
        for m in range(2, 7):  # harmonics 2-6, amplitude up to 0.5 / m of the radius
            outline += r * rng.uniform(0, 0.5 / m) * np.cos(m * angle + rng.uniform(0, 2 * np.pi))
        mask = distance <= outline
        if mask.any() and region[mask].mean() >= min_inside:
            return (cx, cy), r, mask
    return None


def _spicules(shape, cx, cy, r, rng) -> np.ndarray:
    """3-8 thin lines radiating from the mass's edge, as opacity in [0, 0.6]."""
    lines = np.zeros(shape, np.uint8)
    for _ in range(rng.integers(3, 9)):
        a = rng.uniform(0, 2 * np.pi)
        length = r * rng.uniform(0.4, 1.0)
        start = (int(cx + r * 0.8 * np.cos(a)), int(cy + r * 0.8 * np.sin(a)))
        end = (int(cx + (r + length) * np.cos(a)), int(cy + (r + length) * np.sin(a)))
        cv2.line(lines, start, end, 255, 1)
    return cv2.GaussianBlur(lines.astype(np.float32) / 255 * 0.6, (0, 0), 0.7)
