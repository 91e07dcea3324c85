"""Synthetic masses drawn into real lung fields (lungcnn.data.synthetic.masses)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lungcnn.data.io import LungWindow
from lungcnn.data.lungcrop import find_lung_fields, lung_region
from lungcnn.data.synthetic.masses import insert_mass
from lungcnn.data.transforms import load_for_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _chest(size: int = 256, tissue: int = 120, lung: int = 10) -> np.ndarray:
    """Air, an elliptical body with a little grain, two dark lungs left and right of the midline."""
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size), np.float32)
    image[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = tissue
    for cx in (0.3, 0.7):
        image[((x - cx) / 0.12) ** 2 + ((y - 0.5) / 0.18) ** 2 < 1] = lung
    image += np.random.default_rng(0).normal(0, 3, image.shape) * (image > 0)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("tissue", [120, 230])  # a soft-tissue window, and a lung window where tissue is near white
def test_a_mass_lies_in_a_lung_field_and_looks_like_the_slices_soft_tissue(tissue):
    image = _chest(tissue=tissue)
    out, mass = insert_mass(image, np.random.default_rng(3), radius=(8, 14), spiculated=0.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    fields = find_lung_fields(image)
    cx, cy = mass.centre
    assert fields.lungs[cy, cx]
    assert lung_region(fields)[mass.mask].mean() >= 0.7
    # Drawn in the slice's own rendering: inside the mass, about as bright as the body's soft tissue, not the lung.
    assert abs(float(np.median(out[mass.mask])) - tissue) < 0.15 * tissue
    # Nothing changes away from the mass (its blurred edge reaches at most 8 pixels out).
    near = cv2.dilate(mass.mask.astype(np.uint8), np.ones((17, 17), np.uint8)) > 0
    assert np.array_equal(out[~near], image[~near])
    assert not np.array_equal(out[near], image[near])


def test_the_same_generator_state_draws_the_same_mass_and_another_draws_another():
    image = _chest()
    a, mass_a = insert_mass(image, np.random.default_rng(7))
    b, mass_b = insert_mass(image, np.random.default_rng(7))
    c, mass_c = insert_mass(image, np.random.default_rng(8))
    assert np.array_equal(a, b) and mass_a.centre == mass_b.centre
    assert not np.array_equal(a, c)


def test_no_mass_without_lungs_or_room_and_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    body = _chest(lung=120)  # a body with no dark lung field in it
    assert insert_mass(body, rng) is None
    # A radius larger than the lungs cannot lie 70% inside them.
    assert insert_mass(_chest(), rng, radius=(200, 220), tries=5) is None
    with pytest.raises(ValueError, match="uint8"):
        insert_mass(_chest().astype(np.float32), rng)
    with pytest.raises(ValueError, match="radius"):
        insert_mass(_chest(), rng, radius=(10, 5))
    with pytest.raises(ValueError, match="min_inside"):
        insert_mass(_chest(), rng, min_inside=0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared data at ../shared")
@pytest.mark.parametrize("name", ["luna16-normal-dev/normal/p1_z_120.png", "iqothnccd-dev/Normal cases/Normal case (1).jpg"])
def test_a_mass_in_a_real_normal_slice_is_brighter_than_its_lung(name):
    image = load_for_model(SHARED / name, 512, LungWindow(level=50, width=400))
    out, mass = insert_mass(image, np.random.default_rng(0), radius=(20, 30))
    lungs = find_lung_fields(image).lungs
    assert np.median(out[mass.mask]) > np.median(image[lungs & ~mass.mask]) + 40
