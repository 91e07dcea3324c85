"""Lung fields: find the two lungs of a CT slice, crop to them, and tell when no lungs are in view.

Nodules are small; cropping away air, table and chest wall spends more of the model's pixels on the
lungs. And a slice without lung fields (neck, abdomen) or whose lungs cannot be found (an inverted
image: a MONOCHROME1 file decoded the wrong way round) is nothing a lung-nodule classifier can judge:
the reference model called such slices "malignant" at > 99%.

Method (classic, no learning): bright corners mean an inverted image (air is dark in every CT window) ->
threshold -> the body is the largest bright component (holes filled) -> lungs are the dark regions inside the
body -> the two largest, one each side of the body's midline, each big enough. Exports differ in how bright
soft tissue is (IQ-OTH/NCCD's soft-tissue-like JPEGs, lung-window PNGs, some lung-window JPEGs that keep
tissue at 1-10 of 255), so Otsu's threshold is tried first, then lower ones, and the first that shows two
lungs in a body wins.

Input: (H, W) float in [0, 1] or uint8 in [0, 255]; masks are (H, W) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NO_BODY = "no body found"
# Bumped whenever the lung fields found for an image change: cached features of lung-cropped images are keyed by it
# (`features.cache.pixel_settings`). 2: the corner check, and two lungs that meet at the midline.
VERSION = 2
SPLIT_LUNG_FRACTION = 0.04  # each side of one dark region, for it to be two lungs that meet at the midline
MIN_LUNG_FRACTION = 0.01  # of the image area, for a dark region inside the body to count as a lung
MIN_BODY_FRACTION = 0.1  # of the image area, for the largest bright region to count as a body
# Around a body lies dark air (at least the corners outside a round field of view); in an inverted slice the
# largest bright region is that air, and "inside" it is the whole image.
MIN_OUTSIDE, MAX_BRIGHT_OUTSIDE = 0.08, 0.25
# Tissue is closed into solid regions at ~1/40 of the image; where a soft-tissue window leaves the chest
# wall's fat black (IQ-OTH/NCCD), only a coarser closing bridges the gaps between the ribs.
# Last, where even that leaves the rib cage open: the body's convex hull, less a chest wall's depth.
STAGES = ((False, 1 / 40), (False, 1 / 15), (True, 1 / 15))
# Air fills a CT slice's corners (outside the body, or outside the scanner's round field of view): black in a
# soft-tissue window, dark grey (~60 of 255) in a lung window. Inverted, the corners turn bright (180-255), and a
# lung-window slice inverted then shows grey "lungs" in a dark "body" that the segmentation can take for a chest.
# Corners: squares of 1/14 of the side; bright: their median above half the range (shared sources, every image:
# plain <= 76, inverted >= 179; docs/lesion.md).
CORNER, BRIGHT_CORNERS = 1 / 14, 127
INVERTED = "bright corners (an inverted image?)"


@dataclass(frozen=True)
class LungFields:
    """What `find_lung_fields` found: the lung fields and the body, or why not.

    Args:
        lungs: the two lung fields, or None when no two plausible lungs were found.
        body: the body with its holes filled, or None when no body was found either.
        reason: empty when the lungs were found, else why not (for tables and logs).
    """

    lungs: np.ndarray | None
    body: np.ndarray | None
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.lungs is not None

    @property
    def area(self) -> float:
        """The lung fields' share of the image (0 when not found)."""
        return 0.0 if self.lungs is None else float(self.lungs.mean())


def find_lung_fields(image: np.ndarray) -> LungFields:
    """The lung fields of one slice (see the module docstring); never raises for an odd image."""
    gray = _gray(image)
    if _corner_median(gray) > BRIGHT_CORNERS:
        return LungFields(None, None, INVERTED)
    otsu, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    first: LungFields | None = None
    for hull, scale, threshold in [(h, s, t) for h, s in STAGES for t in (otsu, otsu / 2, otsu / 4, 6.0, 2.0)]:
        fields = _segment(gray, threshold, scale, hull)
        if fields.found:
            return fields
        if first is None or (first.body is None and fields.body is not None):
            first = fields  # the reason reported is Otsu's, unless only a lower threshold found a body
    return first


def lungs_in_view(image: np.ndarray) -> bool:
    """The predictor's lung check: False when a body is in view without two lung fields in it (neck, abdomen) or
    the image looks inverted; True when both lungs are found, and when no body is found at all. A bone-window
    export (IQ-OTH/NCCD has some: only ribs and spine are bright) shows no body to look in, so the check cannot
    tell, and an image that is no CT at all is the domain guard's to refuse."""
    fields = find_lung_fields(image)
    return fields.found or fields.reason == NO_BODY


def lung_bbox(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the lung fields (else of the body), or None when neither is found."""
    fields = find_lung_fields(image)
    mask = fields.lungs if fields.found else fields.body
    return None if mask is None else _box(mask)


def crop_to_lungs(image: np.ndarray, margin: float = 0.08) -> np.ndarray:
    """The lung fields' bounding box widened by `margin` (of the image size) on each side.

    Without two lungs the box is the body's; with no body either (not a CT slice) the image is returned
    unchanged: cropping is an optimisation, never a reason to fail (the lung check says "not judged")."""
    box = lung_bbox(image)
    if box is None:
        return image
    h, w = image.shape
    top, bottom, left, right = box
    dy, dx = int(margin * h), int(margin * w)
    return image[max(0, top - dy) : min(h, bottom + dy), max(0, left - dx) : min(w, right + dx)]


def lung_tiles(image: np.ndarray, tile: int, stride: int, min_inside: float = 0.5) -> list[tuple[int, int]]:
    """(top, left) of the square `tile`-pixel tiles on a `stride` grid over the lung fields' bounding box whose share
    inside the lung region is at least `min_inside` (where none is, as at the apex or the base, the one with the
    largest share); [] when no two lungs are found.

    Lesion-scale inputs for multiple-instance learning; "inside" is `lung_region`, so that tiles over a tumour still
    count as lung. The grid is centred on the box and stays inside the image."""
    fields = find_lung_fields(image)
    if not fields.found or min(image.shape) < tile:
        return []
    inside = cv2.integral(lung_region(fields).astype(np.uint8))
    top, bottom, left, right = _box(fields.lungs)
    shares = {(y, x): (inside[y + tile, x + tile] - inside[y, x + tile] - inside[y + tile, x] + inside[y, x]) / tile**2
              for y in _grid(top, bottom, tile, stride, image.shape[0]) for x in _grid(left, right, tile, stride, image.shape[1])}
    return [t for t, share in shares.items() if share >= min_inside] or [max(shares, key=shares.get)]


def lung_region(fields: LungFields) -> np.ndarray:
    """(H, W) bool: each found lung field's convex hull. A tumour is bright tissue, so it makes a hole or a notch in
    the dark field (at the hilum, on the pleura); the hull still counts it as lung. Needs `fields.found`."""
    if fields.lungs is None:
        raise ValueError(f"no lung fields to take the hulls of: {fields.reason}")
    count, labels = cv2.connectedComponents(fields.lungs.astype(np.uint8))
    region = np.zeros(fields.lungs.shape, np.uint8)
    for k in range(1, count):
        region |= _hull(((labels == k) * 255).astype(np.uint8))
    return region > 0


def _grid(start: int, stop: int, tile: int, stride: int, limit: int) -> list[int]:
    """Tile origins covering [start, stop) with `stride`, centred on it, clipped to [0, limit - tile]."""
    n = max(1, int(np.ceil((stop - start - tile) / stride)) + 1)
    first = (start + stop - (tile + (n - 1) * stride)) // 2
    return sorted({int(np.clip(first + i * stride, 0, limit - tile)) for i in range(n)})


def _gray(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255.0, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (5, 5), 0)


def _corner_median(gray: np.ndarray) -> float:
    c = max(1, int(round(min(gray.shape) * CORNER)))
    return float(np.median(np.concatenate([gray[:c, :c], gray[:c, -c:], gray[-c:, :c], gray[-c:, -c:]], axis=None)))


def _segment(gray: np.ndarray, threshold: float, scale: float, hull: bool = False) -> LungFields:
    """Body and lungs at one threshold and closing scale; the lungs only if two plausible ones are found."""
    k = max(3, int(round(min(gray.shape) * scale)) | 1)
    tissue = (gray > threshold).astype(np.uint8) * 255
    tissue = cv2.morphologyEx(tissue, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    body = _largest_component(tissue)
    if body is None or body.sum() < MIN_BODY_FRACTION * 255 * gray.size:
        return LungFields(None, None, NO_BODY)
    filled = _fill_holes(body) if not hull else _hull(body)
    outside = filled == 0
    if outside.mean() < MIN_OUTSIDE or (tissue[outside] > 0).mean() > MAX_BRIGHT_OUTSIDE:
        return LungFields(None, None, "no dark air around the body (an inverted image?)")
    inside = filled if not hull else cv2.erode(filled, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    lungs = cv2.morphologyEx(((inside > 0) & (body == 0)).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    top, bottom, left, right = _box(filled)
    middle = (left + right) / 2
    count, labels, areas = _components(lungs)
    if count >= 2:
        # Near the apex the two lungs can meet in front of the mediastinum (the anterior junction line, thinner than
        # a pixel at the model's size) and form one dark region: cut a large one at the body's midline.
        big = 1 + int(np.argmax(areas[1:]))
        region = labels == big
        halves = region[:, : int(middle)].sum(), region[:, int(middle) + 1 :].sum()
        if min(halves) >= SPLIT_LUNG_FRACTION * gray.size:
            lungs[:, int(middle)] = 0
            count, labels, areas = _components(lungs)
    order = np.argsort(areas[1:])[::-1][:2] + 1
    body_mask = filled > 0
    if len(order) < 2 or areas[order[1]] < MIN_LUNG_FRACTION * gray.size:
        return LungFields(None, body_mask, "no two lung fields inside the body")
    columns = np.arange(labels.shape[1])
    xs = sorted(int((labels == c).sum(axis=0) @ columns) / int(areas[c]) for c in order)  # the two lungs' centroids, x
    if not xs[0] < middle < xs[1]:
        return LungFields(None, body_mask, "no lung field on one side of the body")
    return LungFields(np.isin(labels, order), body_mask)


def _hull(mask: np.ndarray) -> np.ndarray:
    points = cv2.findNonZero(mask)
    out = np.zeros_like(mask)
    cv2.fillConvexPoly(out, cv2.convexHull(points), 255)
    return out


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    left, top, width, height = cv2.boundingRect(np.asarray(mask, np.uint8))  # of a uint8 image: its nonzero pixels
    return top, top + height, left, left + width


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components: their count (background included), the label image and each label's area.
    OpenCV's `connectedComponentsWithStats` costs 3x the labelling alone here; areas are one `bincount`, and
    centroids are only needed for two components."""
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    return count, labels, np.bincount(labels.ravel(), minlength=count).astype(np.int32)  # int32: stats' own type


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    count, labels, areas = _components(mask)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(areas[1:]))
    return (labels == largest).astype(np.uint8) * 255


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # Flood the background from a padded border; whatever the flood cannot reach is inside the body.
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 255)
    return (padded | cv2.bitwise_not(flood))[1:-1, 1:-1]
