"""One Predictor for every consumer: evaluate, `lungcnn-predict` and the Streamlit app.

It owns the checkpoint's preprocessing (read -> lung window -> pad/resize -> normalise) and its
calibration (temperature or isotonic) and decision threshold, so those exist in one place only.
Binary checkpoints give P(malignant) per image; K-class checkpoints give one probability per class.
Only the logits come from a pluggable backend (`TorchBackend`, or onnxruntime via
`lungcnn.inference.onnx_export.OnnxBackend`), so every runtime shares the same pixels and calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from lungcnn.calibration import apply_isotonic
from lungcnn.checkpoint import build_network, load_checkpoint
from lungcnn.data.io import MAX_BYTES, MAX_PIXELS, LungWindow
from lungcnn.data.transforms import load_for_model
from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.metrics import decide_multiclass


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


BACKENDS = ("torch", "onnx", "auto")


class Backend(Protocol):
    """Normalised images (N, 3, S, S) float32 -> logits (N,) binary or (N, K): the only part a runtime swaps."""

    name: str

    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """The PyTorch network (eval mode); channels_last is faster on CPU for MobileNetV2's depthwise convs."""

    name = "torch"

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", channels_last: bool = False) -> None:
        self.device, self.channels_last = torch.device(device), channels_last
        self.net = net.eval().to(self.device)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # outside inference_mode: parameters stay normal tensors

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).float().cpu().numpy()


TTA_MODES = ("none", "flip")


def tta_logits(logits_fn: Any, x: Any, tta: str = "none") -> Any:
    """Logits of a normalised batch (N, 3, S, S), numpy or torch, averaged over its test-time views.

    `none`: the image only. `flip`: the mean of the image's and its left-right mirror's logits (lungs are
    roughly mirror-symmetric and training flips them too). Set at calibration time, so the temperature is
    fitted on the same averaged logits that are later served.
    """
    if tta == "none":
        return logits_fn(x)
    if tta == "flip":
        mirrored = torch.flip(x, dims=[-1]) if isinstance(x, torch.Tensor) else np.ascontiguousarray(x[..., ::-1])
        return (logits_fn(x) + logits_fn(mirrored)) / 2
    raise LungCNNInputError(f"test-time augmentation must be one of {TTA_MODES}, got {tta!r}")


def normalisation_lut(mean: list[float], std: list[float]) -> np.ndarray:
    """(3, 256) float32: gray value -> normalised value per channel, bit-identical to albumentations' Normalize."""
    mean255, std255 = np.asarray(mean, np.float32) * 255, np.asarray(std, np.float32) * 255
    return (np.arange(256, dtype=np.float32)[None] - mean255[:, None]) * (np.float32(1) / std255)[:, None]


class Predictor:
    def __init__(self, meta: dict[str, Any], net: torch.nn.Module | None = None, backend: Backend | None = None) -> None:
        if backend is None and net is None:
            raise ValueError("Predictor needs a network or a backend")
        self.meta = meta
        self.net = net.eval() if net is not None else None  # the PyTorch network (Grad-CAM); None for onnx
        self.backend: Backend = backend if backend is not None else TorchBackend(net)
        pre = meta["preprocessing"]
        self.image_size = int(pre["image_size"])
        self.window = LungWindow(**pre["window"])
        self.crop = str(pre.get("crop", "none"))
        self.lut = normalisation_lut(pre["mean"], pre["std"])
        self.class_names: list[str] = list(meta["class_names"])
        self.binary = meta["task"] == "binary"
        self.tta = str(meta.get("tta", "none"))
        if self.tta not in TTA_MODES:
            raise LungCNNInputError(f"checkpoint's test-time augmentation {self.tta!r} is not one of {TTA_MODES}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", *, device: str | None = None,
                        channels_last: bool = False, threads: int | None = None, with_net: bool = False) -> Predictor:
        """A checkpoint (or an exported .onnx with its sidecar) with logits from `backend`.

        "onnx" given a checkpoint exports it beside itself on first use (re-exported when the checkpoint
        changes); "auto" is PyTorch on a CUDA GPU, else onnxruntime when installed, else PyTorch on CPU.
        `with_net` keeps the PyTorch network too (the app's Grad-CAM) when the logits come from onnxruntime.
        """
        path = Path(path)
        if backend not in BACKENDS:
            raise LungCNNInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            gpu = device not in (None, "cpu") or (device is None and torch.cuda.is_available())
            onnx_file = path.suffix.lower() == ".onnx"
            backend = "onnx" if onnx_file or (not gpu and find_spec("onnxruntime") is not None) else "torch"
            device = device or ("cuda" if gpu else "cpu")
        if path.suffix.lower() == ".onnx" and backend != "onnx":
            raise LungCNNInputError(f"{path}: an .onnx file runs on the onnx backend only; pass its checkpoint for {backend}")
        if backend == "onnx":
            from lungcnn.inference.onnx_export import cached_export, load_onnx

            meta, onnx_backend = load_onnx(path if path.suffix.lower() == ".onnx" else cached_export(path), threads)
            net = build_network(*load_checkpoint(path)) if with_net and path.suffix.lower() != ".onnx" else None
            return cls(meta, net, backend=onnx_backend)
        meta, state = load_checkpoint(path)
        net = build_network(meta, state)
        return cls(meta, net, TorchBackend(net, device or "cpu", channels_last))

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

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 -> (N, 3, S, S) float32, bit-identical to `transforms.build_transform` per image.

        A 256-entry table per channel written straight into the batch (cv2.LUT): several times faster
        than albumentations per image, which matters at hundreds of images per second.
        """
        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"expected (N, S, S) uint8 images from Predictor.load, got {images.shape} {images.dtype}")
        out = np.empty((len(images), 3, *images.shape[1:]), np.float32)
        for n, image in enumerate(images):
            for c in range(3):
                cv2.LUT(image, self.lut[c], dst=out[n, c])
        return out

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """(N, S, S) uint8 -> (N, 3, S, S) normalised float tensor."""
        return torch.from_numpy(self.normalise(images))

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> logits (N,) binary or (N, K)."""
        out = [tta_logits(self.backend.logits, self.normalise(images[i : i + batch_size]), self.tta)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) if self.binary else (0, len(self.class_names)), np.float32)

    # -- probabilities --------------------------------------------------------------------------------
    @property
    def logit_shift(self) -> float | list[float]:
        """The prior correction added to the logits before the temperature (lungcnn.calibration.prior)."""
        if self.calibration_method != "temperature":
            return 0.0
        return self.meta.get("calibration", {}).get("logit_shift", 0.0)

    def probabilities(self, logits: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Logits -> P(malignant) (N,) for binary, class probabilities (N, K) otherwise.

        Calibrated with temperature scaling: softmax / sigmoid of (logits + prior shift) / T."""
        logits = np.asarray(logits, np.float64)
        temperature = self.temperature if calibrated and self.calibration_method == "temperature" else 1.0
        if calibrated:
            logits = logits + np.asarray(self.logit_shift, np.float64)
        if not self.binary:
            z = logits / temperature
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return z / z.sum(axis=1, keepdims=True)
        probs = 1.0 / (1.0 + np.exp(-logits / temperature))
        if calibrated and self.calibration_method == "isotonic":
            probs = apply_isotonic(self.meta["calibration"]["isotonic"], probs)
        return probs

    @property
    def decision_weights(self) -> list[float] | None:
        """K classes: the decision is argmax of calibrated P(k) * w_k (lungcnn.calibrate's decision rule)."""
        weights = self.meta.get("decision_weights")
        return None if self.binary or weights is None else [float(w) for w in weights]

    def decide(self, probs: np.ndarray) -> list[str]:
        if self.binary:
            return [self.class_names[1] if p >= self.threshold else self.class_names[0] for p in probs]
        return [self.class_names[i] for i in decide_multiclass(probs, self.decision_weights)]

    def predict_images(self, images: np.ndarray, names: list[str]) -> list[Prediction]:
        return self.from_logits(self.logits(images), names)

    def from_logits(self, logits: np.ndarray, names: list[str]) -> list[Prediction]:
        """Logits from any backend (or Lightning's trainer.predict) -> Predictions, calibrated and decided."""
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
