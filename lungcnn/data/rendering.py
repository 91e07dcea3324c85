"""One rendering for the model: every source's pixels mapped into the model's CT window.

A CT slice reaches lungcnn in one of three renderings, and the same tissue must reach the network as the same
grey level whichever it came in:
- DICOM keeps Hounsfield units: `read_image` applies the model's window (`data.window`) directly.
- An 8-bit export (JPEG, PNG) was rendered by someone else with some display window; when that window is known
  (LUNA16's lung window -600/1500, IQ-OTH/NCCD's soft-tissue-like export), grey level v in [0, 1] stands for
  ``level - width/2 + v * width`` HU, and `rewindow` maps it into the model's window. Only the HU range both
  windows share survives: a lung-window PNG re-windowed into a soft-tissue window keeps its top ~50 grey levels.
- ``as_is``: the 8-bit image as it is (no re-windowing), the single-folder behaviour of lungcnn before sources.

A source says which with its `window`: a preset name (`WINDOWS`), a mapping {level, width}, ``hu`` or
``as_is``; anything else stops the run with one line (`parse_window`).

Rendering augmentation (`rendering_augment`): an unknown export should not decide the answer, so training may
jitter the window (level in HU, width as a fraction), the gamma, add noise and re-compress as JPEG.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lungcnn.data.io import LungWindow, looks_like_dicom, read_image
from lungcnn.errors import LungCNNInputError

if TYPE_CHECKING:
    import albumentations as A

HU, AS_IS = "hu", "as_is"
# Known export windows (level, width) in HU. IQ-OTH/NCCD's text file gives a reading window of width 350-1200 HU
# and centre 50-600 HU; its JPEGs have 92% of their pixels at 0-5 (lungs and air black) and almost none at
# 8-120, as a soft-tissue window renders a chest: 50/400 is the one conf/experiment/iqothnccd.yaml already uses
# to make DICOM look like them (an approximation: the export's exact window is not published).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
    "iqothnccd": (50.0, 400.0),
}


@dataclass(frozen=True)
class Rendering:
    """How a source's pixels were rendered: ``hu`` (DICOM), ``as_is`` or ``window`` (an 8-bit export of `window`)."""

    kind: str
    window: LungWindow | None = None

    def describe(self) -> str | dict[str, float]:
        return self.kind if self.window is None else {"level": self.window.level, "width": self.window.width}


def parse_window(key: str, value: Any) -> Rendering:
    """A source's `window` setting -> Rendering, or one LungCNNInputError naming `key` and the known choices."""
    if isinstance(value, str) and value in (HU, AS_IS):
        return Rendering(value)
    if isinstance(value, str) and value in WINDOWS:
        level, width = WINDOWS[value]
        return Rendering("window", LungWindow(level, width))
    if isinstance(value, Mapping) and set(value) == {"level", "width"} and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value.values()):
        try:
            return Rendering("window", LungWindow(float(value["level"]), float(value["width"])))
        except LungCNNInputError as e:
            raise LungCNNInputError(f"{key}: {e}") from None
    raise LungCNNInputError(f"{key}: unknown window {value!r}; give one of {sorted(WINDOWS)}, {{level: HU, width: HU}}, "
                            f"{HU!r} (DICOM in Hounsfield units) or {AS_IS!r} (8-bit images as they are)")


def parse_export_window(text: str | None, key: str = "--export-window") -> Rendering | None:
    """How a user's 8-bit files were exported, as typed on a command line or picked on the page: a preset name
    (`WINDOWS`), ``LEVEL,WIDTH`` in HU (e.g. ``-600,1500``), or ``as_is`` / None (read them as they are: None)."""
    if text is None or text == AS_IS:
        return None
    parts = text.split(",")
    if len(parts) == 2:
        try:
            return parse_window(key, {"level": float(parts[0]), "width": float(parts[1])})
        except ValueError:
            pass
    if text in WINDOWS:
        return parse_window(key, text)
    raise LungCNNInputError(f"{key}: unknown export window {text!r}; give one of {sorted(WINDOWS)}, LEVEL,WIDTH in HU "
                            f"(e.g. -600,1500) or {AS_IS!r} (8-bit images as they are)")


def to_hu(image: np.ndarray, window: LungWindow) -> np.ndarray:
    """An image in [0, 1] rendered with `window` -> Hounsfield units (exact inside the window, clipped outside)."""
    return window.level - window.width / 2 + np.asarray(image, dtype=np.float64) * window.width


def rewindow(image: np.ndarray, source: LungWindow, target: LungWindow) -> np.ndarray:
    """An image in [0, 1] rendered with `source` -> the same HU rendered with `target`, float32 in [0, 1]."""
    return target.apply(to_hu(image, source))


def render(path: str | Path | bytes, rendering: Rendering, model_window: LungWindow, name: str | None = None,
           **limits: int) -> np.ndarray:
    """Read one file of a source into the model's window: (H, W) float32 in [0, 1].

    A DICOM file always goes through Hounsfield units (whatever the source says), as `read_image` reads it."""
    image = read_image(path, name=name, window=model_window, **limits)
    if rendering.kind == "window" and not _is_dicom(path, name):
        return rewindow(image, rendering.window, model_window)
    return image


def _is_dicom(path: str | Path | bytes, name: str | None) -> bool:
    """The rule `read_image` decoded the file by (so a DICOM, already in the model's window, is not re-windowed)."""
    if isinstance(path, (bytes, bytearray)):
        return looks_like_dicom(bytes(path[:132]), name or "upload")
    with open(path, "rb") as f:
        return looks_like_dicom(f.read(132), name or str(path))


def rendering_augment(model_window: Mapping[str, float] | None = None, level_hu: float = 60.0, width_fraction: float = 0.2,
                      gamma: tuple[int, int] = (80, 125), noise_std: tuple[float, float] = (0.0, 0.03),
                      jpeg_quality: tuple[int, int] = (50, 95), p: float = 0.5) -> list[A.BasicTransform]:
    """Training transforms that change how a slice was rendered, not what it shows (albumentations).

    Window jitter on an image already in the model's window is an affine map of its grey levels, clipped:
    a level shift of d HU moves them by -d / width, a width scaled by s scales them by 1 / s about the middle;
    albumentations' RandomBrightnessContrast is that map (brightness ~ level, contrast ~ width). Then gamma,
    Gaussian noise (std as a fraction of 255) and JPEG re-compression, each with probability `p`.
    """
    import albumentations as A

    width = LungWindow(**(model_window or {})).width
    return [
        A.RandomBrightnessContrast(brightness_limit=level_hu / width, contrast_limit=width_fraction, p=p),
        A.RandomGamma(gamma_limit=tuple(gamma), p=p),
        A.GaussNoise(std_range=tuple(noise_std), p=p),
        A.ImageCompression(quality_range=tuple(jpeg_quality), p=p),
    ]
