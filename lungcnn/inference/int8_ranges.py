"""Activation ranges for static int8, measured one tensor at a time so that one tensor cannot stop the others.

onnxruntime's histogram calibrators (percentile, entropy) bin every activation of the graph in one call and
raise `ValueError: Too many bins for data range` when one tensor's values span too little for 2048 distinct
float32 bin edges (a constant activation of large magnitude, say 1e5; onnxruntime#9597), which ends the whole
quantisation. Here every tensor gets its own onnxruntime `HistogramCollector` with the settings
`quantize_static` would use, and a tensor whose histogram cannot be built (or whose range comes out empty)
falls back to its min/max range and is named in the report. The ranges reach `quantize_static` through its
calibration cache, so they are measured once and every candidate graph of the mixed-precision search reuses
them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lungcnn.inference.onnx_runtime import INPUT

# quantize_static's defaults for these methods (onnxruntime.quantization.calibrate.create_calibrator).
HISTOGRAM = {
    "percentile": {"method": "percentile", "symmetric": True, "num_bins": 2048, "num_quantized_bins": 128,
                   "percentile": 99.999, "scenario": "same"},
    "entropy": {"method": "entropy", "symmetric": False, "num_bins": 128, "num_quantized_bins": 128,
                "percentile": 99.999, "scenario": "same"},
}


def activation_ranges(model_path: str | Path, batches: Iterable[np.ndarray],
                      method: str) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """({tensor: (low, high)} for every float activation of the graph, {tensor: why it got its min/max range}).

    `method` is percentile, entropy or minmax; `batches` are model inputs (N, 3, S, S).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import HistogramCollector

    model = onnx.load(str(model_path))
    names = _activations(model)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in present)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    collectors: dict[str, HistogramCollector] = {}
    fallback: dict[str, str] = {}
    quiet = contextlib.redirect_stdout(io.StringIO())  # the collectors print a line per call
    for batch in batches:
        for name, value in zip(names, session.run(names, {INPUT: batch})):
            value = np.asarray(value, np.float32).ravel()
            low[name] = min(low.get(name, np.inf), float(np.nanmin(value)))
            high[name] = max(high.get(name, -np.inf), float(np.nanmax(value)))
            if method not in HISTOGRAM or name in fallback:
                continue
            try:
                with quiet:
                    collectors.setdefault(name, HistogramCollector(**HISTOGRAM[method])).collect({name: value})
            except ValueError as e:
                fallback[name] = f"{method} histogram failed ({e}); min/max range used"
                collectors.pop(name)
    if not low:
        raise ValueError("no calibration batch was given")
    ranges = {n: (low[n], high[n]) for n in names}
    for name, collector in collectors.items():
        try:
            with quiet:
                lo, hi = (float(v) for v in collector.compute_collection_result()[name][:2])
        except ValueError as e:
            fallback[name] = f"{method} range failed ({e}); min/max range used"
            continue
        if np.isfinite([lo, hi]).all() and lo <= hi:
            ranges[name] = (lo, hi)
        else:
            fallback[name] = f"{method} gave the range ({lo}, {hi}); min/max range used"
    return ranges, fallback


def write_calibration_cache(ranges: dict[str, tuple[float, float]], path: Path) -> None:
    """The ranges in the file `quantize_static(calibration_cache_path=..., calibrate_method=MinMax)` reads."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32)) for n, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def _activations(model) -> list[str]:
    """Float tensors read or written by a node, in graph order (weights excluded), as onnxruntime's calibrator
    selects them: those whose type shape inference knows."""
    import onnx

    graph = model.graph
    floats = {v.name for v in (*graph.value_info, *graph.input, *graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    weights = {t.name for t in graph.initializer}
    names: dict[str, None] = {}
    for node in graph.node:
        for name in (*node.input, *node.output):
            if name in floats and name not in weights:
                names[name] = None
    return list(names)
