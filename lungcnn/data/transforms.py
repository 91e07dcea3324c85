"""Preprocessing and augmentation.

Two steps, split where the cache sits:
1. `load_for_model` (deterministic, cached once per image): read -> optional crop (`CROPS`) ->
   `to_model_grid`: (H, W) float [0, 1] -> pad to a square
   with 0 (air, the CT background, so padding looks like the scan's own border) -> resize to
   (S, S) -> uint8 [0, 255]. Aspect ratio is kept, so wide scans are not stretched.
2. `build_transform` (per sample): albumentations on the (S, S) uint8 image -> gray to 3 channels ->
   normalise with the backbone's pretrained mean/std -> float tensor (3, S, S).
Augmentation is a list of albumentations transforms given in config (`data.augment`); evaluation
uses none of it, so validation, test, predict and the app see exactly the same pixels.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lungcnn.data.io import LungWindow, read_image
from lungcnn.data.lungcrop import crop_to_lungs
from lungcnn.data.rendering import Rendering, render
from lungcnn.errors import fail, require_choice, require_int

if TYPE_CHECKING:  # albumentations imports torch (seconds): only training and its tests need it
    import albumentations as A

MIN_IMAGE_SIZE = 32


CROPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"none": lambda image: image, "lungs": crop_to_lungs}


def load_for_model(source: str | Path | bytes, image_size: int, window: LungWindow, name: str | None = None,
                   crop: str = "none", rendering: Rendering | None = None, **limits: int) -> np.ndarray:
    """Any supported file -> the (S, S) uint8 image the model sees before normalisation.

    `rendering`: how the file's source rendered its pixels (`lungcnn.data.rendering`; one source of several),
    re-windowed into the model's `window`; None reads the file as it is (a single data.root, an upload).
    `limits` (max_bytes, max_pixels) pass through to `read_image`."""
    check_model_input(image_size, crop)
    if rendering is None:
        image = read_image(source, name=name, window=window, **limits)
    else:
        image = render(source, rendering, window, name=name, **limits)
    return to_model_grid(CROPS[crop](image), image_size)


def check_model_input(image_size: int, crop: str) -> None:
    """The settings of `load_for_model` (data.image_size, data.crop); the data module calls this on construction."""
    require_int("data.image_size", image_size, MIN_IMAGE_SIZE)
    require_choice("data.crop", crop, CROPS)


def check_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
    """Per-channel normalisation (data.mean, data.std): three numbers each, std > 0."""
    for key, values in (("data.mean", mean), ("data.std", std)):
        if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3
                or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
                or (key == "data.std" and not all(v > 0 for v in values))):
            fail(key, "null or three numbers" + (" > 0" if key == "data.std" else ""), values)


def to_model_grid(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float in [0, 1] -> (size, size) uint8, centred on a square of air."""
    h, w = image.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = image
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=interpolation)
    return np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)


def build_transform(
    mean: Sequence[float], std: Sequence[float], augment: Sequence[A.BasicTransform] = (), seed: int | None = None
) -> A.Compose:
    """(S, S) uint8 -> (3, S, S) float tensor, with `augment` applied first (training only).

    albumentations keeps its own random generator, so `seed` is what makes augmentation repeatable.
    `mean`/`std` are data.mean/data.std, or the backbone's own when those are null.
    """
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    check_normalisation(mean, std)
    return A.Compose(
        [
            *augment,
            A.ToRGB(num_output_channels=3),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ],
        seed=seed,
    )
