"""One Predictor for every consumer: evaluate, `lungcnn-predict` and the Streamlit app.

It applies the checkpoint's `ModelSpec`: preprocessing (read -> window -> pad/resize -> normalise), then
the spec's calibration and decision rule on the task's probabilities, so those exist in one place only.
Every image gets a calibrated probability per class and a decision, and, when the checkpoint has a
domain guard (`spec.DomainGuard`), a domain score: an image unlike the training images is decided
`out of domain` (its probabilities are kept for research, never shown as an answer). Only the
logits and domain scores come from a pluggable backend (`TorchBackend`, or onnxruntime via
`lungcnn.inference.onnx_runtime.OnnxBackend`), so every runtime shares the same pixels and calibration.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from lungcnn.data.io import MAX_BYTES, MAX_PIXELS
from lungcnn.data.lungcrop import lungs_in_view
from lungcnn.data.rendering import Rendering
from lungcnn.data.transforms import load_for_model
from lungcnn.errors import LungCNNInputError
from lungcnn.spec import TTA_MODES, ModelSpec
from lungcnn.task import is_tensor

if TYPE_CHECKING:  # torch only on the PyTorch paths: an .onnx model runs without importing it (seconds)
    import torch

    from lungcnn.data.labelled import Labelled

OUT_OF_DOMAIN = "out of domain"  # the decision of an image the domain guard flags
NO_LUNGS = "no lungs in view"  # the decision of an image whose lung fields the lung check cannot find: not judged


@dataclass
class Prediction:
    """One image's result (`lungcnn.inference.schema` writes it as a table row), or why it could not be read.

    `probabilities` are calibrated by the checkpoint, `uncalibrated` the network's own; both per class name.
    `domain_score`/`in_domain`: the guard's score and verdict (NaN/None when the checkpoint has no guard);
    a flagged image's `decision` is `OUT_OF_DOMAIN`. `lungs_in_view`: the lung check's verdict (None when the
    check is off); an image without lungs is decided `NO_LUNGS` (before the guard's verdict: the more useful reason).
    `novelty`: how unlike the normal training slices the image is (`spec.Novelty`; NaN without a normal bank): what
    ranks a series' slices.
    """

    file: str
    logits: tuple[float, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    uncalibrated: dict[str, float] = field(default_factory=dict)
    decision: str = ""
    error: str | None = None
    domain_score: float = float("nan")
    in_domain: bool | None = None
    lungs_in_view: bool | None = None
    novelty: float = float("nan")

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answered(self) -> bool:
        """Read, lungs in view and not flagged by the domain guard: a result may be shown."""
        return self.ok and self.in_domain is not False and self.lungs_in_view is not False

    @property
    def confidence(self) -> float:
        """Calibrated probability of the decided class."""
        return self.probabilities.get(self.decision, float("nan"))


BACKENDS = ("torch", "onnx", "auto")


Scores = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # logits, domain scores, novelty


class Backend(Protocol):
    """Normalised images (N, 3, S, S) float32 -> logits (N,) binary or (N, K), the domain guard's scores (N,) (None
    without a guard) and the novelty (N,) (None without a normal bank): the only part a runtime swaps."""

    name: str

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def forward(self, batch: np.ndarray) -> Scores: ...


class TorchBackend:
    """The PyTorch network (eval mode); channels_last is faster on CPU for MobileNetV2's depthwise convs."""

    name = "torch"

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", channels_last: bool = False,
                 guard: torch.nn.Module | None = None, novelty: torch.nn.Module | None = None) -> None:
        import torch

        self.device, self.channels_last = torch.device(device), channels_last
        self.net = net.eval().to(self.device)
        self.guard = guard.eval().to(self.device) if guard is not None else None
        self.novelty = novelty.eval().to(self.device) if novelty is not None else None
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # outside inference_mode: parameters stay normal tensors

    def forward(self, batch: np.ndarray) -> Scores:
        import torch

        from lungcnn.models.guard import guarded_forward  # torch's side: the onnx-only path imports no torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return _numpy(*guarded_forward(self.net, self.guard, x, self.novelty))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def from_features(self, features: np.ndarray) -> Scores:
        """`forward` from pooled backbone features (N, F) (the feature cache's) instead of images."""
        import torch

        with torch.inference_mode():
            f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
            return _numpy(self.net.logits_of(f), *(None if m is None else m(f) for m in (self.guard, self.novelty)))


def _numpy(*tensors: torch.Tensor | None) -> Scores:
    return tuple(None if t is None else t.float().cpu().numpy() for t in tensors)


def tta_logits(logits_fn: Any, x: Any, tta: str = "none", plain: Any = None) -> Any:
    """Logits of a normalised batch (N, 3, S, S), numpy or torch, averaged over its test-time views.

    `none`: the image only. `flip`: the mean of the image's and its left-right mirror's logits (lungs are
    roughly mirror-symmetric and training flips them too). Set at calibration time, so the temperature is
    fitted on the same averaged logits that are later served. `plain`: the image's own logits when the
    caller already has them (the domain guard's pass), so they are not computed twice.
    """
    plain = logits_fn(x) if plain is None else plain
    if tta == "none":
        return plain
    if tta == "flip":
        mirrored = x.flip(dims=[-1]) if is_tensor(x) else np.ascontiguousarray(x[..., ::-1])
        return (plain + logits_fn(mirrored)) / 2
    raise ValueError(f"test-time augmentation must be one of {TTA_MODES}, got {tta!r}")  # ModelSpec checked it


def normalisation_lut(mean: list[float], std: list[float]) -> np.ndarray:
    """(3, 256) float32: gray value -> normalised value per channel, bit-identical to albumentations' Normalize."""
    mean255, std255 = np.asarray(mean, np.float32) * 255, np.asarray(std, np.float32) * 255
    return (np.arange(256, dtype=np.float32)[None] - mean255[:, None]) * (np.float32(1) / std255)[:, None]


class Predictor:
    """A checkpoint's spec + a backend: files -> Predictions (see the module docstring).

    Args:
        spec: the model spec (preprocessing, task, calibration, decision rule).
        net: the PyTorch network (needed for Grad-CAM; None when the logits come from onnxruntime only).
        backend: where logits come from; default: the network under PyTorch.
        guard: the domain guard's scoring module for the default PyTorch backend (`checkpoint.build_guard`);
            required when the spec has a guard and no backend is given.
        lung_check: run the lung check (True/False), or None for the spec's `preprocessing.lung_check`.
        export_window: how the 8-bit files to classify were exported (`rendering.parse_export_window`): re-windowed
            into the model's window, as training reads a source with that window; None reads them as they are.
            DICOM always goes through Hounsfield units.
    """

    def __init__(self, spec: ModelSpec, net: torch.nn.Module | None = None, backend: Backend | None = None,
                 guard: torch.nn.Module | None = None, lung_check: bool | None = None,
                 export_window: Rendering | None = None) -> None:
        if backend is None and net is None:
            raise ValueError("Predictor needs a network or a backend")
        if backend is None and spec.guard is not None and guard is None:
            raise ValueError("the spec has a domain guard: pass its module (checkpoint.build_guard) or a backend")
        self.spec = spec
        self.task = spec.task
        self.net = net.eval() if net is not None else None  # the PyTorch network (Grad-CAM); None for onnx
        self.backend: Backend = backend if backend is not None else TorchBackend(net, guard=guard)
        pre = spec.preprocessing
        self.image_size, self.window, self.crop = pre.image_size, pre.window, pre.crop
        self.lut = normalisation_lut(pre.mean, pre.std)
        self.class_names: list[str] = list(spec.class_names)
        self.tta = spec.calibration.tta
        self.lung_check = pre.lung_check if lung_check is None else bool(lung_check)
        self.export_window = export_window

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", *, device: str | None = None,
                        channels_last: bool = False, threads: int | None = None, with_net: bool = False,
                        lung_check: bool | None = None, export_window: Rendering | None = None) -> Predictor:
        """A checkpoint (or an exported .onnx with its sidecar) with logits from `backend`.

        "onnx" given a checkpoint exports it beside itself on first use (re-exported when the checkpoint
        changes); "auto" is PyTorch on a CUDA GPU, else onnxruntime when installed, else PyTorch on CPU.
        `with_net` keeps the PyTorch network too (the app's Grad-CAM) when the logits come from onnxruntime.
        `lung_check` overrides the checkpoint's `preprocessing.lung_check` (None: keep it); `export_window`: see the
        class.
        """
        path = Path(path)
        onnx_file = path.suffix.lower() == ".onnx"
        if backend not in BACKENDS:
            raise LungCNNInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto" and onnx_file:
            backend = "onnx"  # decided before asking torch about GPUs: an .onnx model never imports torch
        if backend == "auto":
            import torch

            gpu = device not in (None, "cpu") or (device is None and torch.cuda.is_available())
            backend = "onnx" if not gpu and find_spec("onnxruntime") is not None else "torch"
            device = device or ("cuda" if gpu else "cpu")
        if onnx_file and backend != "onnx":
            raise LungCNNInputError(f"{path}: an .onnx file runs on the onnx backend only; pass its checkpoint for {backend}")
        if onnx_file:
            from lungcnn.inference.onnx_runtime import load_onnx

            spec, onnx_backend = load_onnx(path, threads)
            return cls(spec, backend=onnx_backend, lung_check=lung_check, export_window=export_window)
        from lungcnn.models.checkpoint import build_guard, build_network, build_novelty, load_checkpoint

        if backend == "onnx":
            from lungcnn.inference.onnx_export import cached_export
            from lungcnn.inference.onnx_runtime import load_onnx

            spec, onnx_backend = load_onnx(cached_export(path), threads)
            return cls(spec, build_network(*load_checkpoint(path)) if with_net else None, backend=onnx_backend,
                       lung_check=lung_check, export_window=export_window)
        spec, state = load_checkpoint(path)
        net = build_network(spec, state)
        backend = TorchBackend(net, device or "cpu", channels_last, build_guard(spec, state), build_novelty(spec, state))
        return cls(spec, net, backend, lung_check=lung_check, export_window=export_window)

    def with_export_window(self, export_window: Rendering | None) -> Predictor:
        """The same model reading 8-bit files exported with `export_window` (a shallow copy: network and backend are
        shared, so a page can give each session its own choice of one cached model)."""
        other = copy.copy(self)
        other.export_window = export_window
        return other

    # -- pixels --------------------------------------------------------------------------------------
    def load(self, source: str | Path | bytes, name: str | None = None, *,
             max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """A file or upload -> the (S, S) uint8 image the model sees (before normalisation).

        `max_bytes`/`max_pixels` let a caller (the app's upload limit) tighten read_image's limits.
        Same steps as the data module (`transforms.load_for_model`), so training and prediction see the same pixels.
        """
        return load_for_model(source, self.image_size, self.window, name=name, crop=self.crop,
                              rendering=self.export_window, max_bytes=max_bytes, max_pixels=max_pixels)

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
        import torch

        return torch.from_numpy(self.normalise(images))

    def logits(self, images: np.ndarray, batch_size: int = 32, features: np.ndarray | None = None) -> np.ndarray:
        """(N, S, S) uint8 -> logits (N,) for one output or (N, K), with the checkpoint's test-time augmentation."""
        return self.forward(images, batch_size, features)[0]

    def forward(self, images: np.ndarray, batch_size: int = 32, features: np.ndarray | None = None) -> Scores:
        """(N, S, S) uint8 -> (logits as `logits` gives them, domain scores (N,) or None without a guard, novelty (N,)
        or None without a normal bank).

        The guard and the novelty score the image as it is (its mirror, under flip TTA, only adds to the logits).
        `features`: the images' pooled backbone features (`cached_features`), so the backbone does not run again."""
        if features is not None:
            return self.backend.from_features(features)
        logits, scores, novelty = [], [], []
        for i in range(0, len(images), batch_size):
            x = self.normalise(images[i : i + batch_size])
            plain, score, new = self.backend.forward(x)
            logits.append(tta_logits(self.backend.logits, x, self.tta, plain=plain))
            scores.append(score)
            novelty.append(new)

        def joined(parts: list, present: bool) -> np.ndarray | None:  # None: no guard / bank (in the spec or backend)
            if not present or any(p is None for p in parts):
                return None
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)

        return (np.concatenate(logits) if logits else self.task.empty_logits(), joined(scores, self.spec.guard is not None),
                joined(novelty, self.spec.novelty is not None))

    def lungs(self, images: np.ndarray) -> np.ndarray | None:
        """(N, S, S) uint8 -> whether each image's lung fields are found (N,) bool, or None when the check is off.

        On the model's own pixels, so every path (files, uploads, zips, Lightning) checks the same image."""
        if not self.lung_check:
            return None
        return np.array([lungs_in_view(image) for image in images], dtype=bool)

    # -- results --------------------------------------------------------------------------------------
    def from_logits(self, logits: np.ndarray, names: list[str], domain_scores: np.ndarray | None = None,
                    lungs: np.ndarray | None = None, novelty: np.ndarray | None = None) -> list[Prediction]:
        """Logits (and domain scores, the lung check's verdicts `Predictor.lungs` and the novelty) from any backend or
        Lightning's trainer.predict -> Predictions, calibrated and decided; an image without lungs in view is
        decided `NO_LUNGS`, one the guard flags `OUT_OF_DOMAIN`."""
        task, spec = self.task, self.spec
        if spec.guard is not None and domain_scores is None:
            raise ValueError("this checkpoint has a domain guard: its scores must come with the logits")
        if self.lung_check and lungs is None:
            raise ValueError("the lung check is on: its verdicts (Predictor.lungs) must come with the logits")
        calibrated = spec.probabilities(logits)
        per_class = task.class_probabilities(calibrated)
        raw = task.class_probabilities(spec.probabilities(logits, calibrated=False))
        decisions = [self.class_names[d] for d in spec.decide(calibrated)]
        rows = np.asarray(logits, np.float64).reshape(len(names), -1)
        scores = np.full(len(names), np.nan) if domain_scores is None else np.asarray(domain_scores, np.float64)
        inside = [None] * len(names) if spec.guard is None else spec.guard.in_domain(scores).tolist()
        seen = [None] * len(names) if lungs is None else [bool(v) for v in lungs]
        new = np.full(len(names), np.nan) if novelty is None else np.asarray(novelty, np.float64)
        return [Prediction(name, tuple(map(float, z)), dict(zip(self.class_names, map(float, c))),
                           dict(zip(self.class_names, map(float, r))),
                           NO_LUNGS if found is False else OUT_OF_DOMAIN if ok is False else d,
                           domain_score=float(s), in_domain=ok, lungs_in_view=found, novelty=float(v))
                for name, z, c, r, d, s, ok, found, v in zip(names, rows, per_class, raw, decisions, scores, inside, seen, new)]

    def predict_images(self, images: np.ndarray, names: list[str]) -> list[Prediction]:
        logits, scores, novelty = self.forward(images)
        return self.from_logits(logits, names, scores, self.lungs(images), novelty)

    def backbone_features(self, data: Labelled, cache_dir: str | Path | None = None, batch_size: int = 32) -> np.ndarray:
        """(N, F) pooled backbone features of the readable images of `data` (PyTorch backend): read from the feature
        cache in `cache_dir` (`lungcnn.features.cache`; computed where missing), else computed by the backbone."""
        if cache_dir is not None:
            from lungcnn.features.cache import evaluation_features

            return evaluation_features(cache_dir, self.net, self.spec.preprocessing, data.paths, data.images,
                                       data.readable_renderings)
        from lungcnn.models.guard import pooled_features

        batches = (self.normalise(data.images[i : i + batch_size]) for i in range(0, len(data.images), batch_size))
        return pooled_features(self.net, batches).detach().numpy()

    def cached_features(self, cache_dir: str | Path | None, data: Labelled) -> np.ndarray | None:
        """`backbone_features` from the feature cache in `cache_dir`, or None where the cache cannot stand in for
        the network: no cache asked for, test-time flips (the mirror has no entry) or a backend other than PyTorch."""
        if cache_dir is None or self.tta != "none" or not hasattr(self.backend, "from_features"):
            return None
        return self.backbone_features(data, cache_dir)

    def classify_labelled(self, data: Labelled, features: np.ndarray | None = None) -> tuple[list[Prediction], np.ndarray]:
        """`classify` of images already read (`lungcnn.data.labelled`), named by their files."""
        logits, scores, novelty = self.forward(data.images, features=features)
        done = iter(self.from_logits(logits, list(data.frame["file"][data.readable]), scores, self.lungs(data.images),
                                     novelty))
        names = list(data.frame["file"])
        return [next(done) if e is None else Prediction(n, error=e) for n, e in zip(names, data.errors, strict=True)], logits

    def read(self, sources: list[str | Path]) -> tuple[np.ndarray, list[str | None]]:
        """Read and preprocess files: the readable images stacked (n, S, S) uint8, and per source its error or None."""
        images, errors = [], []
        for source in sources:
            try:
                images.append(self.load(source))
                errors.append(None)
            except LungCNNInputError as e:
                errors.append(str(e))
        stacked = np.stack(images) if images else np.zeros((0, self.image_size, self.image_size), np.uint8)
        return stacked, errors

    def classify(self, sources: list[str | Path], names: list[str] | None = None) -> tuple[list[Prediction], np.ndarray]:
        """Read, preprocess and classify files: a Prediction per source (an unreadable one with `error`), named
        `names` (default: the sources), and the readable images' logits in order."""
        names = [str(s) for s in sources] if names is None else names
        images, errors = self.read(sources)
        logits, scores, novelty = self.forward(images)
        done = iter(self.from_logits(logits, [n for n, e in zip(names, errors) if e is None], scores, self.lungs(images),
                                     novelty))
        return [next(done) if e is None else Prediction(n, error=e) for n, e in zip(names, errors)], logits

    def predict_files(self, sources: list[str | Path]) -> list[Prediction]:
        """Read, preprocess and classify files; an unreadable file becomes a Prediction with `error`."""
        return self.classify(sources)[0]
