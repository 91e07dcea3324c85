"""Running an exported model: its sidecar, an onnxruntime session and the `OnnxBackend`, without torch.

`lungcnn.inference.onnx_export` writes `<name>.onnx` and its sidecar `<name>.onnx.json` (format
`lungcnn-onnx/2`: the checkpoint's `ModelSpec` metadata plus the graph's description); this module reads
them back. It imports neither torch nor Lightning, so `lungcnn-predict --ckpt model.onnx` and the page start
in about a second instead of ten (importing Lightning alone took ~7 s here).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError
from lungcnn.spec import ModelSpec

FORMAT = "lungcnn-onnx/2"
INPUT, PROBABILITY, LOGIT, DOMAIN, NOVELTY = "image", "probability", "logit", "domain_score", "novelty"


def sidecar_path(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(onnx_path: str | Path) -> tuple[dict[str, Any], ModelSpec]:
    """The sidecar of an .onnx file and its spec, checked: right format, valid spec, and it belongs to this graph."""
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
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("onnx"), dict):
        raise LungCNNInputError(f"{side}: not a lungcnn ONNX sidecar of format {FORMAT}; re-export with `lungcnn-export`")
    spec = ModelSpec.from_metadata(record.get("meta"), source=str(side))
    if record["onnx"].get("sha256") != sha256(onnx_path):
        raise LungCNNInputError(f"{onnx_path}: does not match its sidecar (SHA-256 differs); re-export with `lungcnn-export`")
    return record, spec


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

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(logits, domain scores or None when the graph has no guard, novelty or None without a normal bank) from one
        run."""
        present = {o.name for o in self.session.get_outputs()}
        names = [LOGIT] + [n for n in (DOMAIN, NOVELTY) if n in present]
        got = dict(zip(names, self.session.run(names, {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})))
        return got[LOGIT], got.get(DOMAIN), got.get(NOVELTY)

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, logit) as the graph computes them: for checks and external-use parity."""
        probability, logit = self.session.run([PROBABILITY, LOGIT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})
        return probability, logit

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}


def load_onnx(path: str | Path, threads: int | None = None, spin: bool = False) -> tuple[ModelSpec, OnnxBackend]:
    """(model spec, backend) from an .onnx file and its sidecar."""
    _, spec = read_sidecar(path)
    backend = OnnxBackend(path, threads, spin)
    outputs = {o.name for o in backend.session.get_outputs()}  # opens it now: a broken file fails here
    for name, part, what in ((DOMAIN, spec.guard, "domain guard"), (NOVELTY, spec.novelty, "novelty bank")):
        if (name in outputs) != (part is not None):
            raise LungCNNInputError(f"{path}: the graph {'has' if name in outputs else 'lacks'} a {name} output but its "
                                    f"sidecar {'lacks' if name in outputs else 'has'} a {what}; re-export with `lungcnn-export`")
    return spec, backend
