"""Lung-field cropping finds the lungs of a phantom and never fails on a non-CT image."""

from __future__ import annotations

import numpy as np

from lungcnn.data.io import LungWindow
from lungcnn.data.lungcrop import crop_to_lungs, lung_bbox
from lungcnn.data.transforms import load_for_model


def _phantom(size: int = 128) -> np.ndarray:
    """Air, an elliptical body, two dark lungs left and right of the midline."""
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size), np.float32)
    image[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 0.5
    for cx in (0.3, 0.7):
        image[((x - cx) / 0.12) ** 2 + ((y - 0.5) / 0.18) ** 2 < 1] = 0.05
    return image


def test_finds_both_lungs_of_a_phantom():
    top, bottom, left, right = lung_bbox(_phantom())
    # Lungs span x in 0.18..0.82, y in 0.32..0.68 of 128 px.
    assert abs(left - 0.18 * 128) <= 3 and abs(right - 0.82 * 128) <= 3
    assert abs(top - 0.32 * 128) <= 3 and abs(bottom - 0.68 * 128) <= 3
    cropped = crop_to_lungs(_phantom(), margin=0.0)
    assert cropped.shape == (bottom - top, right - left)


def test_non_ct_images_pass_through_unchanged():
    for image in (np.zeros((64, 64), np.float32), np.random.default_rng(0).random((64, 64)).astype(np.float32)):
        assert crop_to_lungs(image).shape == image.shape or lung_bbox(image) is not None


def test_load_for_model_crops_when_asked(tmp_path):
    from PIL import Image

    path = tmp_path / "phantom.png"
    Image.fromarray((_phantom() * 255).astype(np.uint8)).save(path)
    plain = load_for_model(path, 64, LungWindow())
    cropped = load_for_model(path, 64, LungWindow(), crop="lungs")
    assert plain.shape == cropped.shape == (64, 64)
    # Cropped to the lungs, lung pixels (dark but not air) fill far more of the frame.
    def lung_fraction(image: np.ndarray) -> float:
        return float(((image > 5) & (image < 30)).mean())

    assert lung_fraction(cropped) > 1.4 * lung_fraction(plain)
