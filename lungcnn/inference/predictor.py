"""One Predictor for every consumer: evaluate, `lungcnn-predict` and the Streamlit app.

It owns the checkpoint's preprocessing (read -> lung window -> pad/resize -> normalise) and its
calibration (temperature or isotonic) and decision threshold, so those exist in one place only.
Binary checkpoints give P(malignant) per image; K-class checkpoints give one probability per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungcnn.calibration import apply_isotonic
from lungcnn.checkpoint import build_network, load_checkpoint
from lungcnn.data.io import MAX_BYTES, MAX_PIXELS, LungWindow
from lungcnn.data.transforms import build_transform, load_for_model
from lungcnn.errors import LungCNNInputError


@dataclass
class Prediction:
    """One image's result: probabilities and decision, or the reason it could not be read."""

    file: str
    logit: float | list[float] = float("nan")
    probability: float = float("nan")  # uncalibrated P(malignant), or max class probability
    calibrated: float = float("nan")  # calibrated P(malignant), or the decided class's probability
    decision: str = ""
    class_probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Predictor:
    def __init__(self, meta: dict[str, Any], net: torch.nn.Module) -> None:
        self.meta, self.net = meta, net.eval()
        pre = meta["preprocessing"]
        self.image_size = int(pre["image_size"])
        self.window = LungWindow(**pre["window"])
        self.crop = str(pre.get("crop", "none"))
        self.transform = build_transform(pre["mean"], pre["std"])
        self.class_names: list[str] = list(meta["class_names"])
        self.binary = meta["task"] == "binary"

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Predictor:
        meta, state = load_checkpoint(path)
        return cls(meta, build_network(meta, state))

    # -- settings from the checkpoint --------------------------------------------------------------
    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def calibration_method(self) -> str:
        return str(self.meta.get("calibration", {}).get("method", "none"))

    @property
    def is_calibrated(self) -> bool:
        return self.calibration_method != "none"

    # -- pixels --------------------------------------------------------------------------------------
    def load(self, source: str | Path | bytes, name: str | None = None, *,
             max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """A file or upload -> the (S, S) uint8 image the model sees (before normalisation).

        `max_bytes`/`max_pixels` let a caller (the app's upload limit) tighten read_image's limits.
        Same steps as the data module (`transforms.load_for_model`), so training and prediction see the same pixels.
        """
        return load_for_model(source, self.image_size, self.window, name=name, crop=self.crop,
                              max_bytes=max_bytes, max_pixels=max_pixels)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """(N, S, S) uint8 -> (N, 3, S, S) normalised float tensor."""
        return torch.stack([self.transform(image=image)["image"] for image in images])

    @torch.inference_mode()
    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> logits (N,) binary or (N, K)."""
        out = [self.net(self.to_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return torch.cat(out).float().numpy() if out else np.zeros((0,) if self.binary else (0, len(self.class_names)))

    # -- probabilities --------------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Logits -> P(malignant) (N,) for binary, class probabilities (N, K) otherwise."""
        logits = np.asarray(logits, np.float64)
        temperature = self.temperature if calibrated and self.calibration_method == "temperature" else 1.0
        if not self.binary:
            z = logits / temperature
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return z / z.sum(axis=1, keepdims=True)
        probs = 1.0 / (1.0 + np.exp(-logits / temperature))
        if calibrated and self.calibration_method == "isotonic":
            probs = apply_isotonic(self.meta["calibration"]["isotonic"], probs)
        return probs

    def decide(self, probs: np.ndarray) -> list[str]:
        if self.binary:
            return [self.class_names[1] if p >= self.threshold else self.class_names[0] for p in probs]
        return [self.class_names[i] for i in np.argmax(probs, axis=1)]

    def predict_images(self, images: np.ndarray, names: list[str]) -> list[Prediction]:
        logits = self.logits(images)
        raw, cal = self.probabilities(logits, calibrated=False), self.probabilities(logits)
        results = []
        for name, z, p, c, d in zip(names, logits, raw, cal, self.decide(cal)):
            if self.binary:
                results.append(Prediction(name, float(z), float(p), float(c), d,
                                          {self.class_names[0]: 1 - float(c), self.class_names[1]: float(c)}))
            else:
                k = self.class_names.index(d)
                results.append(Prediction(name, [float(v) for v in z], float(p[k]), float(c[k]), d,
                                          dict(zip(self.class_names, map(float, c)))))
        return results

    def predict_files(self, sources: list[str | Path]) -> list[Prediction]:
        """Read, preprocess and classify files; an unreadable file becomes a Prediction with `error`."""
        images, names, results = [], [], {}
        for source in sources:
            try:
                images.append(self.load(source))
                names.append(str(source))
            except LungCNNInputError as e:
                results[str(source)] = Prediction(str(source), error=str(e))
        if images:
            for prediction in self.predict_images(np.stack(images), names):
                results[prediction.file] = prediction
        return [results[str(s)] for s in sources]
