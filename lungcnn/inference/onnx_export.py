"""ONNX export and the onnxruntime backend.

`export_onnx` writes `<name>.onnx` plus a sidecar `<name>.onnx.json` holding the checkpoint's `ModelSpec`
metadata, so the pair is self-contained: the Predictor rebuilds its preprocessing, calibration and
decision rule from the sidecar and never needs the checkpoint again. The graph takes normalised images
(N, 3, S, S) with a dynamic batch axis and returns two outputs, or more:

- ``probability``: the task's own probability rule (`Task.probabilities`, traced) with the spec's prior
  shift and temperature folded in, so a consumer outside lungcnn can use the file alone. Isotonic
  calibration is a lookup, not a graph op: there the output is uncalibrated and the sidecar says the host
  must apply the map in ``meta.calibration`` (the Predictor does).
- ``logit``: the raw logit(s). The Predictor calibrates from these through the same spec, so both outputs
  come from one definition; the tests check that they agree.
- ``domain_score`` (only when the checkpoint has a domain guard): the guard's kNN distance, computed in the
  graph from the same pooled features with the reference bank as a constant; an image is in the domain when
  it is <= ``meta.guard.threshold``.
- ``novelty`` (only when the checkpoint has a normal bank, `spec.Novelty`): the kNN distance of the standardised
  pooled features to normal training slices, which ranks a series' slices.

Both files are written atomically; the sidecar, written last, records the .onnx file's SHA-256, so a
half-replaced pair is detected on load instead of silently mixing an old graph with new metadata. Reading
the pair back and running it (`load_onnx`, `OnnxBackend`) is `lungcnn.inference.onnx_runtime`, which
imports no torch.
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

from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import write_bytes, write_json
from lungcnn.inference.onnx_runtime import (
    DOMAIN,
    FORMAT,
    INPUT,
    LOGIT,
    NOVELTY,
    PROBABILITY,
    make_session,
    read_sidecar,
    sha256,
    sidecar_path,
)
from lungcnn.models.checkpoint import build_guard, build_network, build_novelty, load_checkpoint
from lungcnn.models.guard import guarded_forward
from lungcnn.spec import ModelSpec
from lungcnn.task import Task

OPSET = 17


class CalibratedNet(nn.Module):
    """net -> (probability, logit[, domain_score][, novelty]): the task's probabilities with the spec's prior shift and
    temperature, the domain guard's score when a guard is given, the novelty when a normal bank is given."""

    def __init__(self, net: nn.Module, task: Task, shift: float | tuple[float, ...] = 0.0, temperature: float = 1.0,
                 guard: nn.Module | None = None, novelty: nn.Module | None = None) -> None:
        super().__init__()
        self.net, self.task, self.temperature, self.guard, self.novelty = net, task, float(temperature), guard, novelty
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))

    @property
    def output_names(self) -> list[str]:
        optional = ((DOMAIN, self.guard), (NOVELTY, self.novelty))
        return [PROBABILITY, LOGIT] + [name for name, module in optional if module is not None]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logit, score, novelty = guarded_forward(self.net, self.guard, x, self.novelty)
        probability = self.task.probabilities(logit, self.shift, self.temperature)
        return tuple(t for t in (probability, logit, score, novelty) if t is not None)


def export_onnx(ckpt: str | Path, out_path: str | Path | None = None) -> tuple[Path, Path]:
    """Export a lungcnn checkpoint to (out.onnx, out.onnx.json); default out: the checkpoint's name with .onnx."""
    ckpt = Path(ckpt)
    out = Path(out_path) if out_path else ckpt.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise LungCNNInputError(f"{out}: the ONNX output path must end in .onnx")
    if out.resolve() == ckpt.resolve():
        raise LungCNNInputError(f"{out}: refusing to overwrite the checkpoint with its export")
    spec, state = load_checkpoint(ckpt)
    data = onnx_bytes(build_network(spec, state), spec, build_guard(spec, state), build_novelty(spec, state))
    write_bytes(out, data)
    sidecar = sidecar_path(out)
    write_json(sidecar, sidecar_record(spec, out, hashlib.sha256(data).hexdigest(), source=ckpt))
    return out, sidecar


def onnx_bytes(net: nn.Module, spec: ModelSpec, guard: nn.Module | None = None, novelty: nn.Module | None = None) -> bytes:
    """The serialised graph, checked against PyTorch on a sample batch before anything is written."""
    if (guard is None) != (spec.guard is None):
        raise ValueError("the spec's domain guard and the guard module passed must both be present or both absent")
    if (novelty is None) != (spec.novelty is None):
        raise ValueError("the spec's novelty bank and the novelty module passed must both be present or both absent")
    size = spec.preprocessing.image_size
    model = CalibratedNet(net.eval(), spec.task, spec.calibration.graph_shift, spec.calibration.graph_temperature,
                          guard, novelty).eval()
    names = model.output_names
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated but needs no onnxscript and handles this
        # plain CNN; its tracer also warns about the static `shape[-1] == 1` check in LungNet.forward.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), buffer, input_names=[INPUT], output_names=names,
                          dynamic_axes={name: {0: "batch"} for name in (INPUT, *names)},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    data = buffer.getvalue()
    _check_export(data, model, sample)
    return data


def _check_export(data: bytes, model: CalibratedNet, sample: torch.Tensor) -> None:
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data))
    with torch.no_grad():
        expected = [t.numpy() for t in model(sample)]
    got = make_session(data).run(model.output_names, {INPUT: sample.numpy()})
    for name, a, b in zip(model.output_names, got, expected):
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"ONNX export check failed: output {name!r} differs from PyTorch "
                               f"(max |diff| {np.abs(a - b).max() if a.shape == b.shape else 'shape'})")


def sidecar_record(spec: ModelSpec, onnx_path: Path, onnx_sha256: str, source: Path | None = None) -> dict[str, Any]:
    size = spec.preprocessing.image_size
    calibration = spec.calibration
    host_isotonic = calibration.method == "isotonic"
    record: dict[str, Any] = {
        "format": FORMAT,
        "meta": spec.to_metadata(),
        "onnx": {
            "file": onnx_path.name,
            "sha256": onnx_sha256,
            "opset": OPSET,
            "input": {"name": INPUT, "shape": ["batch", 3, size, size], "dtype": "float32",
                      "preprocessing": "gray uint8 image from meta.preprocessing, replicated to 3 channels, "
                                       "(value / 255 - mean) / std per channel"},
            "outputs": {"probability": PROBABILITY, "logit": LOGIT, **({"domain_score": DOMAIN} if spec.guard else {}),
                        **({"novelty": NOVELTY} if spec.novelty else {})},
            "domain_score": ("the domain guard's kNN distance of the image's pooled features to the training bank; in "
                             "the domain when <= meta.guard.threshold" if spec.guard else None),
            "novelty": ("the kNN distance of the image's standardised pooled features to normal training slices; ranks "
                        "a series' slices (higher: more suspicious), decides nothing" if spec.novelty else None),
            "temperature_in_graph": calibration.graph_temperature,
            "logit_shift_in_graph": calibration.graph_shift,
            "probability": (f"the {spec.task.name} task's probabilities of the logits; apply the isotonic map "
                            "meta.calibration.isotonic_x/_y on the host" if host_isotonic else
                            f"calibrated: the {spec.task.name} task's probabilities of (logit + logit_shift_in_graph) "
                            "/ temperature_in_graph"),
            "host_calibration": "isotonic" if host_isotonic else None,
            "host_test_time_augmentation": ("average the logits of the image and of its left-right mirror (two runs), "
                                            "then calibrate" if calibration.tta == "flip" else None),
        },
        "torch": torch.__version__,
    }
    if source is not None:
        record["source"] = {"checkpoint": str(source.resolve()), "sha256": sha256(source)}
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
        return read_sidecar(path)[0].get("source", {}).get("sha256") == ckpt_sha256
    except LungCNNInputError:
        return False
