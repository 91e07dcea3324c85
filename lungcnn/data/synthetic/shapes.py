"""Drawing primitives of the synthetic phantoms, in normalised image units (the image spans 0..1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Ellipse:
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

    def scaled(self, f: float) -> Ellipse:
        return Ellipse(self.cx, self.cy, self.a * f, self.b * f, self.angle)


def blend(img, value, alpha):
    """`img` moved towards `value` by coverage `alpha` (0 keeps img, 1 gives value)."""
    return img + (value - img) * alpha


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish smooth noise on a (size, size) grid over the unit square."""
    coarse = rng.normal(0.0, 1.0, (cells + 1, cells + 1))
    g = (np.arange(size) + 0.5) / size
    return bilinear(
        coarse,
        np.broadcast_to(g[None, :], (size, size)),
        np.broadcast_to(g[:, None], (size, size)),
        edge_aligned=True,
    )


def bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray, edge_aligned: bool = False) -> np.ndarray:
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


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (numpy only; used to give the noise CT-like grain)."""
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(img, radius, mode="reflect")
    h, w = img.shape
    rows = sum(kv * padded[:, i : i + w] for i, kv in enumerate(kernel))
    return sum(kv * rows[i : i + h, :] for i, kv in enumerate(kernel))
