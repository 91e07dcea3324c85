"""Training augmentation that simulates an 8-bit export through another display window (`ForeignExport`).

Its own module because albumentations takes seconds to import: `lungcnn.data.rendering` serves prediction too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np

from lungcnn.data.io import LungWindow
from lungcnn.data.rendering import AS_IS, HU, parse_window, to_hu
from lungcnn.errors import LungCNNInputError, require_number


class ForeignExport(A.ImageOnlyTransform):
    """A slice in the model window as it would look had it reached lungcnn as an 8-bit export of another display
    window, re-windowed into the model window (`render`): HU outside the export's window saturate, and the export's
    256 grey levels quantise the HU it kept.

    Why: a lung-window export (-600/1500) re-windowed into the soft-tissue model window (50/400) keeps HU only up to
    +150 (bone and contrast one flat grey, 191 of 255) in steps of 6 HU (the model window's own: 1.6). Sources trained
    on have one export each, so without this the network may learn the look of an export with the label; a source
    it never saw (LUNA16 held out) then looks like neither class.

    Args:
        model_window: {level, width} in HU, the model's window (`data.window`).
        windows: export windows, each a preset name (`WINDOWS`) or {level, width} in HU; one is drawn per image.
        level_hu: the drawn window's level moves uniformly within +-level_hu (exports of one kind differ).
        width_fraction: its width is scaled by a factor within 1 +- width_fraction.
        p: probability of applying it.

    Image: (H, W) or (H, W, C) uint8 in the model window, returned in the same shape and dtype.
    """

    def __init__(self, model_window: Mapping[str, float] | None = None, windows: Sequence[Any] = ("lung",),
                 level_hu: float = 100.0, width_fraction: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.model_window = dict(model_window or {})
        self._model = LungWindow(**self.model_window)
        if isinstance(windows, (str, Mapping)) or not windows:
            raise LungCNNInputError(f"ForeignExport.windows: a non-empty list of windows, got {windows!r}")
        self._windows = [parse_window("ForeignExport.windows", w).window for w in windows]
        if any(w is None for w in self._windows):
            raise LungCNNInputError(f"ForeignExport.windows: display windows only (not {HU!r} or {AS_IS!r}), got {windows!r}")
        self.windows = [w if isinstance(w, str) else dict(w) for w in windows]
        self.level_hu = require_number("ForeignExport.level_hu", level_hu, 0, None, low_open=False)
        self.width_fraction = require_number("ForeignExport.width_fraction", width_fraction, 0, 1, low_open=False)

    def get_params(self) -> dict[str, Any]:
        window = self._windows[self.py_random.randrange(len(self._windows))]
        level = window.level + self.py_random.uniform(-self.level_hu, self.level_hu)
        width = window.width * self.py_random.uniform(1 - self.width_fraction, 1 + self.width_fraction)
        return {"lut": export_lut(self._model, LungWindow(level, width))}

    def apply(self, img: np.ndarray, lut: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise LungCNNInputError(f"ForeignExport needs a uint8 image in the model window, got {img.dtype}")
        return lut[img]


def export_lut(model: LungWindow, export: LungWindow) -> np.ndarray:
    """(256,) uint8: a model-window grey level -> the same HU exported in `export` at 8 bits, rendered back."""
    hu = to_hu(np.arange(256) / 255.0, model)
    exported = np.clip(np.round((hu - (export.level - export.width / 2)) / export.width * 255.0), 0, 255)
    return np.round(model.apply(to_hu(exported / 255.0, export)) * 255.0).astype(np.uint8)
