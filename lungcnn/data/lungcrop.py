"""Lung-field cropping: find the two lungs and crop to them before resizing.

Nodules are small; cropping away air, table and chest wall spends more of the model's pixels on the
lungs. Method (classic, no learning): Otsu threshold -> the body is the largest bright component
(holes filled) -> lungs are the dark regions inside the body -> keep the two largest -> their
bounding box, widened by `margin`. Without two lungs (one each side of the body's midline) the box
is the body's; if no body is found either (not a CT slice), the image is returned unchanged:
cropping is an optimisation, never a reason to fail.

Input and output: (H, W) float32 in [0, 1]; the output is a sub-rectangle of the input.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_LUNG_FRACTION = 0.01  # of the image area, for a dark region inside the body to count as a lung


def lung_bbox(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the lung fields (else of the body), or None when neither is found."""
    gray = cv2.GaussianBlur(np.clip(image * 255.0, 0, 255).astype(np.uint8), (5, 5), 0)
    otsu, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Exports differ wildly in how bright soft tissue is (some lung-window JPEGs keep it at 1-10 of
    # 255): try Otsu's threshold, then lower ones, and keep the first that shows two lungs in a body.
    body_box = None
    for threshold in (otsu, otsu / 2, otsu / 4, 6.0, 2.0):
        body, lungs = _segment(gray, threshold)
        if lungs is not None:
            return _box(lungs)
        if body_box is None and body is not None:
            body_box = _box(body)
    return body_box


def _segment(gray: np.ndarray, threshold: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(body mask, lung mask) at one threshold; the lung mask only if two plausible lungs are found."""
    k = max(3, int(round(min(gray.shape) / 40)) | 1)
    tissue = (gray > threshold).astype(np.uint8) * 255
    # Speckled tissue is closed into solid regions at a scale of ~1/40 of the image.
    tissue = cv2.morphologyEx(tissue, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    body = _largest_component(tissue)
    if body is None or body.sum() < 0.1 * 255 * gray.size:
        return None, None
    filled = _fill_holes(body)
    lungs = cv2.morphologyEx(((filled > 0) & (body == 0)).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(lungs, connectivity=8)
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
    if len(order) < 2 or stats[order[1], cv2.CC_STAT_AREA] < MIN_LUNG_FRACTION * gray.size:
        return filled, None
    centre = _box(filled)
    middle = (centre[2] + centre[3]) / 2
    xs = sorted(centroids[order, 0])
    if not xs[0] < middle < xs[1]:  # one lung on each side of the body's midline
        return filled, None
    return filled, np.isin(labels, order)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def crop_to_lungs(image: np.ndarray, margin: float = 0.08) -> np.ndarray:
    """The lung fields' bounding box widened by `margin` (of the image size) on each side."""
    box = lung_bbox(image)
    if box is None:
        return image
    h, w = image.shape
    top, bottom, left, right = box
    dy, dx = int(margin * h), int(margin * w)
    return image[max(0, top - dy) : min(h, bottom + dy), max(0, left - dx) : min(w, right + dx)]


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8) * 255


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # Flood the background from a padded border; whatever the flood cannot reach is inside the body.
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 255)
    return (padded | cv2.bitwise_not(flood))[1:-1, 1:-1]
