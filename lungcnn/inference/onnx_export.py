"""ONNX export and the onnxruntime backend.

`export_onnx` writes `<name>.onnx` plus a sidecar `<name>.onnx.json` holding the checkpoint's full
metadata, so the pair is self-contained: the Predictor rebuilds its preprocessing, calibration and
threshold from the sidecar and never needs the checkpoint again. The graph takes normalised images
(N, 3, S, S) with a dynamic batch axis and returns two outputs:

- ``probability``: calibrated for temperature scaling (binary sigmoid(logit / T), K-class
  softmax(logits / T)), so a consumer outside lungcnn can use the file alone. Isotonic calibration is a
  lookup, not a graph op: there the output is the uncalibrated sigmoid(logit) and the sidecar says the
  host must apply the map in ``meta.calibration.isotonic`` (the Predictor does).
- ``logit``: the raw logit(s). The Predictor calibrates from these itself, so calibration has one
  definition (Predictor.probabilities); the folded-in copy is checked against it in the tests.

Both files are written atomically; the sidecar, written last, records the .onnx file's SHA-256, so a
half-replaced pair is detected on load instead of silently mixing an old graph with new metadata.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungcnn.checkpoint import FORMAT as CHECKPOINT_FORMAT
from lungcnn.checkpoint import PREPROCESSING_KEYS, REQUIRED, build_network, load_checkpoint
from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import write_bytes, write_json

FORMAT = "lungcnn-onnx/1"
INPUT, PROBABILITY, LOGIT = "image", "probability", "logit"
OPSET = 17


class CalibratedNet(nn.Module):
    """net -> (probability, logit), with the checkpoint's prior shift and temperature folded into the probability."""

    def __init__(self, net: nn.Module, temperature: float, binary: bool, shift: float | list[float] = 0.0) -> None:
        super().__init__()
        self.net, self.temperature, self.binary = net, float(temperature), binary
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.net(x)
        z = (logit + self.shift) / self.temperature
        return (torch.sigmoid(z) if self.binary else torch.softmax(z, dim=1)), logit


def graph_shift(meta: dict[str, Any]) -> float | list[float]:
    """The prior correction folded into the graph (temperature scaling only, as in the Predictor)."""
    calibration = meta.get("calibration", {})
    return calibration.get("logit_shift", 0.0) if calibration.get("method") == "temperature" else 0.0


def graph_temperature(meta: dict[str, Any]) -> float:
    """The T folded into the graph: the fitted one for temperature scaling, else 1 (isotonic runs on the host)."""
    method = meta.get("calibration", {}).get("method", "none")
    return float(meta.get("temperature", 1.0)) if method == "temperature" else 1.0


def sidecar_path(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(ckpt: str | Path, out_path: str | Path | None = None) -> tuple[Path, Path]:
    """Export a lungcnn checkpoint to (out.onnx, out.onnx.json); default out: the checkpoint's name with .onnx."""
    ckpt = Path(ckpt)
    out = Path(out_path) if out_path else ckpt.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise LungCNNInputError(f"{out}: the ONNX output path must end in .onnx")
    if out.resolve() == ckpt.resolve():
        raise LungCNNInputError(f"{out}: refusing to overwrite the checkpoint with its export")
    meta, state = load_checkpoint(ckpt)
    data = onnx_bytes(build_network(meta, state), meta)
    write_bytes(out, data)
    sidecar = sidecar_path(out)
    write_json(sidecar, sidecar_record(meta, out, hashlib.sha256(data).hexdigest(), source=ckpt))
    return out, sidecar


def onnx_bytes(net: nn.Module, meta: dict[str, Any]) -> bytes:
    """The serialised graph, checked against PyTorch on a sample batch before anything is written."""
    binary = meta["task"] == "binary"
    size = int(meta["preprocessing"]["image_size"])
    model = CalibratedNet(net.eval(), graph_temperature(meta), binary, graph_shift(meta)).eval()
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated but needs no onnxscript and handles this
        # plain CNN; its tracer also warns about the static `shape[-1] == 1` check in LungNet.forward.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), buffer, input_names=[INPUT], output_names=[PROBABILITY, LOGIT],
                          dynamic_axes={INPUT: {0: "batch"}, PROBABILITY: {0: "batch"}, LOGIT: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    data = buffer.getvalue()
    _check_export(data, model, sample)
    return data


def _check_export(data: bytes, model: nn.Module, sample: torch.Tensor) -> None:
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data))
    with torch.no_grad():
        expected = [t.numpy() for t in model(sample)]
    got = make_session(data).run([PROBABILITY, LOGIT], {INPUT: sample.numpy()})
    for name, a, b in zip((PROBABILITY, LOGIT), got, expected):
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"ONNX export check failed: output {name!r} differs from PyTorch "
                               f"(max |diff| {np.abs(a - b).max() if a.shape == b.shape else 'shape'})")


def sidecar_record(meta: dict[str, Any], onnx_path: Path, onnx_sha256: str, source: Path | None = None) -> dict[str, Any]:
    size = int(meta["preprocessing"]["image_size"])
    isotonic = meta.get("calibration", {}).get("method") == "isotonic"
    record: dict[str, Any] = {
        "format": FORMAT,
        "meta": meta,
        "onnx": {
            "file": onnx_path.name,
            "sha256": onnx_sha256,
            "opset": OPSET,
            "input": {"name": INPUT, "shape": ["batch", 3, size, size], "dtype": "float32",
                      "preprocessing": "gray uint8 image from meta.preprocessing, replicated to 3 channels, "
                                       "(value / 255 - mean) / std per channel"},
            "outputs": {"probability": PROBABILITY, "logit": LOGIT},
            "temperature_in_graph": graph_temperature(meta),
            "logit_shift_in_graph": graph_shift(meta),
            "probability": ("uncalibrated sigmoid(logit); apply the isotonic map meta.calibration.isotonic (x, y) "
                            "on the host" if isotonic else
                            "calibrated " + ("sigmoid(logit / T)" if meta["task"] == "binary" else "softmax(logits / T)")),
            "host_calibration": "isotonic" if isotonic else None,
            "host_test_time_augmentation": ("average the logits of the image and of its left-right mirror (two runs), "
                                            "then calibrate" if meta.get("tta", "none") == "flip" else None),
        },
        "torch": torch.__version__,
    }
    if source is not None:
        record["source"] = {"checkpoint": str(source.resolve()), "sha256": sha256(source)}
    return record


def read_sidecar(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar of an .onnx file, checked: right format, full metadata, and it belongs to this graph."""
    import json

    onnx_path = Path(onnx_path)
    side = sidecar_path(onnx_path)
    if not onnx_path.is_file():
        raise LungCNNInputError(f"ONNX model not found: {onnx_path}")
    if not side.is_file():
        raise LungCNNInputError(f"{onnx_path}: its sidecar {side.name} is missing; re-export with `lungcnn-export`")
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LungCNNInputError(f"{side}: not a readable sidecar ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("meta"), dict):
        raise LungCNNInputError(f"{side}: not a lungcnn ONNX sidecar (format {FORMAT} expected)")
    meta = record["meta"]
    missing = [k for k in REQUIRED if k not in meta] + [k for k in PREPROCESSING_KEYS if k not in meta.get("preprocessing", {})]
    if missing or meta.get("format") != CHECKPOINT_FORMAT:
        raise LungCNNInputError(f"{side}: the metadata lacks {missing or 'the checkpoint format'}; refusing to guess")
    if record["onnx"].get("sha256") != sha256(onnx_path):
        raise LungCNNInputError(f"{onnx_path}: does not match its sidecar (SHA-256 differs); re-export with `lungcnn-export`")
    return record


def cached_export(ckpt: str | Path) -> Path:
    """The checkpoint's .onnx beside it (exported on first use, re-exported if the checkpoint changed).

    Falls back to a per-user temp folder when the checkpoint's folder is read-only.
    """
    ckpt = Path(ckpt)
    load_checkpoint(ckpt)  # refuse a foreign or incomplete checkpoint before hashing or exporting anything
    digest = sha256(ckpt)
    candidates = [ckpt.with_suffix(".onnx"),
                  Path(tempfile.gettempdir()) / f"lungcnn-onnx-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
                  / f"{ckpt.stem}-{digest[:16]}.onnx"]
    for path in candidates:
        if _fresh(path, digest):
            return path
    error: OSError | None = None
    for path in candidates:
        try:
            return export_onnx(ckpt, path)[0]
        except OSError as e:
            error = e
    raise LungCNNInputError(f"{ckpt}: cannot write the ONNX export anywhere ({error})")


def _fresh(path: Path, ckpt_sha256: str) -> bool:
    try:
        return read_sidecar(path).get("source", {}).get("sha256") == ckpt_sha256
    except LungCNNInputError:
        return False


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's count, under taskset or a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_session(model: str | Path | bytes, threads: int | None = None, spin: bool = False):
    """An onnxruntime session on CPU (or CUDA when onnxruntime-gpu has it), intra-op threads = cores.

    Idle threads sleep rather than spin by default: the Predictor alternates the model with decoding
    (DataLoader workers, the app), and spinning threads took the cores those need (+37% images/s
    end to end without spinning, measured on 2 busy cores).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers)


class OnnxBackend:
    """Normalised images -> logits through onnxruntime; pickles as its path (DataLoader workers, spawn)."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool = False) -> None:
        self.path, self.threads, self.spin = Path(path), threads, spin
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = make_session(self.path, self.threads, self.spin)
        return self._session

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([LOGIT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, logit) as the graph computes them: for checks and external-use parity."""
        probability, logit = self.session.run([PROBABILITY, LOGIT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})
        return probability, logit

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}


def load_onnx(path: str | Path, threads: int | None = None, spin: bool = False) -> tuple[dict[str, Any], OnnxBackend]:
    """(checkpoint metadata, backend) from an .onnx file and its sidecar."""
    record = read_sidecar(path)
    backend = OnnxBackend(path, threads, spin)
    backend.session  # noqa: B018 - open now, so a broken file fails here rather than mid-run
    return record["meta"], backend
