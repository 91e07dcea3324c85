"""int8 ONNX: static QDQ quantisation of a checkpoint's network, checked against fp32 before it is written.

`quantize_onnx(ckpt)` exports the fp32 graph (`onnx_export.onnx_bytes`) and quantises it with
onnxruntime.quantization (`quant_pre_process`, then `quantize_static` in QDQ format, per-channel int8
weights, uint8 activations) calibrated on images of the checkpoint's training split. Every node after the
last convolution stays in float: the pooled head, the prior shift, the temperature, the probability,
the domain guard and the novelty. Quantising those moved calibrated probabilities by up to 0.5 here (a temperature < 1
sharpens logit errors), while the convolutions carry almost all the compute.

Activation ranges are measured one tensor at a time (`int8_ranges`): a tensor whose values defeat a
histogram calibrator (the guard's kNN distances do: `Too many bins for data range`) gets its min/max range
and is named in the report instead of ending the export with a traceback. With `method="auto"` (the
default) each calibration method, and for the best of them a few sets of extra layers kept in float (the
stem, the last convolution), are measured on the validation split (never the test split): the candidate
whose calibrated logits move least, then whose decisions agree most with fp32, then with the fewest float
nodes, is kept. `float_search=N` then keeps up to N more convolutions in float, one at a time, each the one whose
candidate ranks best on the validation split (a greedy search: ~50 quantisations a step for MobileNetV2). The
measurements are in the report (``candidates``).

The int8 graph is then compared with the fp32 graph on the test split (ROC-AUC of both, decision
agreement, largest change of a calibrated probability). A graph whose decisions agree less than
`min_agreement` (99%) is refused: nothing is written. Otherwise `<name>.int8.onnx`, its sidecar (the
usual `lungcnn-onnx/2` record plus a ``quantization`` entry holding the parity report) and
`<name>.int8.parity.json` are written atomically. Any failure of onnxruntime's quantiser ends in one
`LungCNNInputError` line.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError, require_choice, require_int, require_number
from lungcnn.fileio import write_bytes, write_json
from lungcnn.inference.int8_ranges import activation_ranges, write_calibration_cache
from lungcnn.inference.onnx_export import onnx_bytes, sidecar_record
from lungcnn.inference.onnx_runtime import OnnxBackend, sidecar_path
from lungcnn.inference.predictor import Predictor
from lungcnn.spec import ModelSpec

RANGE_METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_METHODS = ("auto", *RANGE_METHODS)
# Weights as signed (activations uint8: onnxruntime's U8S8, its fast path on CPUs with VNNI) or unsigned int8 (U8U8).
# On x86 CPUs without VNNI (AVX2 only) onnxruntime's U8S8 kernels sum products in 16 bits that can saturate; on
# such a CPU the reference model's probabilities moved 0.117 on average with int8 weights, 0.043 with uint8 ones
# (docs/results/int8.md). `auto` measures both on the validation split, on the machine that exports.
WEIGHT_TYPES = ("int8", "uint8")
WEIGHT_CHOICES = ("auto", *WEIGHT_TYPES)
MIN_AGREEMENT = 0.99
CALIBRATION_BATCH = 8


def int8_path(ckpt: str | Path) -> Path:
    """model.ckpt -> model.int8.onnx"""
    return Path(ckpt).with_suffix(".int8.onnx")


def parity_path(onnx_path: Path) -> Path:
    """model.int8.onnx -> model.int8.parity.json"""
    return onnx_path.with_suffix(".parity.json")


def quantize_onnx(ckpt: str | Path, out_path: str | Path | None = None, *, data_root: str | Path | None = None,
                  calibration_images: int = 128, method: str = "auto", weights: str = "auto",
                  min_agreement: float = MIN_AGREEMENT, float_search: int = 0) -> tuple[Path, Path, dict[str, Any]]:
    """Quantise a checkpoint to int8 ONNX; return (onnx path, sidecar path, parity report).

    Args:
        ckpt: a lungcnn checkpoint.
        out_path: the .onnx to write (default: the checkpoint's name with .int8.onnx).
        data_root: the data folder when it moved since training (default: the one the checkpoint records);
            given a folder, calibration and parity use all of its images rather than the recorded splits.
        calibration_images: how many training images set the activation ranges (spread over the split).
        method: activation range estimate: percentile (99.999%), entropy, minmax, or auto (each measured on the
            validation split with a few float layer sets; the best kept).
        weights: int8 or uint8 convolution weights (WEIGHT_TYPES), or auto (both measured on the validation split).
        min_agreement: the smallest share of test images whose int8 decision must equal the fp32 one.
        float_search: up to this many more convolutions kept in float, chosen one at a time on the validation split
            (each step quantises the graph once per convolution: ~50 times for MobileNetV2).
    """
    from lungcnn.models.checkpoint import build_guard, build_network, build_novelty, load_checkpoint

    ckpt = Path(ckpt)
    out = Path(out_path) if out_path else int8_path(ckpt)
    if out.suffix.lower() != ".onnx":
        raise LungCNNInputError(f"{out}: the ONNX output path must end in .onnx")
    require_int("--calibration-images", calibration_images, 1)
    require_choice("--calibration-method", method, CALIBRATION_METHODS)
    require_choice("--weight-type", weights, WEIGHT_CHOICES)
    require_number("min_agreement", min_agreement, 0, 1, low_open=False, high_open=False)
    require_int("--float-search", float_search, 0)
    spec, state = load_checkpoint(ckpt)
    fp32 = onnx_bytes(build_network(spec, state), spec, build_guard(spec, state), build_novelty(spec, state))
    with tempfile.TemporaryDirectory(prefix="lungcnn-int8-") as tmp:
        fp32_file, int8_file = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32_file.write_bytes(fp32)
        reference = Predictor(spec, backend=OnnxBackend(fp32_file))
        calibration = split_images(spec, "train", data_root, calibration_images)
        selection = split_images(spec, "val", data_root)  # choices are made here, never on the test split
        try:
            chosen = _quantize(fp32_file, int8_file, reference, spec, calibration, selection, method, Path(tmp),
                               float_search, weights)
        except (ValueError, RuntimeError, TypeError, AssertionError) as e:  # onnxruntime's quantiser, not our input
            raise LungCNNInputError(f"{ckpt}: int8 quantisation failed: {' '.join(str(e).split())}") from e
        report = parity(spec, reference, Predictor(spec, backend=OnnxBackend(int8_file)),
                        split_images(spec, "test", data_root))
        data = int8_file.read_bytes()
    used = len(calibration[0]) - len(calibration[0]) % min(CALIBRATION_BATCH, len(calibration[0]))
    report.update(calibration_images=used, min_agreement=min_agreement, **chosen)
    if report["decision_agreement"] < min_agreement:
        raise LungCNNInputError(
            f"{ckpt}: int8 decisions agree with fp32 on {report['decision_agreement']:.1%} of {report['images']} test "
            f"images (< {min_agreement:.0%}); not written (try more --calibration-images or another --calibration-method)")
    write_bytes(out, data)
    write_json(parity_path(out), report)
    sidecar = sidecar_path(out)
    record = sidecar_record(spec, out, hashlib.sha256(data).hexdigest(), source=ckpt)
    record["onnx"]["precision"] = "int8 (static QDQ; head, calibration, guard and novelty in float)"
    record["quantization"] = report
    write_json(sidecar, record)
    return out, sidecar, report


def split_images(spec: ModelSpec, split: str, data_root: str | Path | None,
                 limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 model inputs and labels of one split (evenly spaced, so every patient range is sampled)."""
    from lungcnn.data.labelled import labelled_images

    data = labelled_images(spec.data, spec.preprocessing, spec.class_names, split, data_root, limit)
    if any(data.errors):
        raise LungCNNInputError(next(e for e in data.errors if e))
    return data.images, data.labels


def calibration_batches(predictor: Predictor, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    """Normalised calibration batches as the model sees them, all of one size (onnxruntime's histogram
    collectors fail on a short last batch); the remainder beyond whole batches is left out."""
    size = min(batch_size, len(images))
    for i in range(0, len(images) - size + 1, size):
        yield predictor.normalise(images[i : i + size])


def _quantize(fp32: Path, out: Path, predictor: Predictor, spec: ModelSpec, calibration: tuple[np.ndarray, np.ndarray],
              selection: tuple[np.ndarray, np.ndarray], method: str, tmp: Path, float_search: int = 0,
              weights: str = "auto") -> dict[str, Any]:
    """Write the chosen int8 graph to `out`; return what was chosen and the measurements it was chosen by.

    auto: every range method (and weight type, for weights="auto") with only the head in float, then the best
    with each extra float set.
    float_search: then, up to that many times, the best candidate so far with each further convolution in float
    (greedy forward selection; it stops early when no convolution improves the best)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    model = onnx.load(str(prepared))
    head = float_nodes(model)
    reference = predictor.logits(selection[0])
    candidates: list[dict[str, Any]] = []

    def measure(name: str, cache: Path, label: str, extra: list[str], fallback: dict[str, str], weight: str) -> None:
        path = tmp / f"candidate-{len(candidates)}.onnx"
        _quantize_with(prepared, path, cache, head + extra, weight)
        errors = _selection_error(spec, reference, Predictor(spec, backend=OnnxBackend(path)).logits(selection[0]))
        candidates.append({"calibration_method": name, "weight_type": weight, "float_layers": label,
                           "float_nodes": len(head) + len(extra), **errors, "path": path, "range_fallback": fallback,
                           "extra": extra})

    caches: dict[str, tuple[Path, dict[str, str]]] = {}
    for name in RANGE_METHODS if method == "auto" else (method,):
        ranges, fallback = activation_ranges(prepared, calibration_batches(predictor, calibration[0]), name)
        caches[name] = (tmp / f"ranges-{name}.json", fallback)
        write_calibration_cache(ranges, caches[name][0])
        for weight in WEIGHT_TYPES if weights == "auto" else (weights,):
            measure(name, caches[name][0], "head", [], fallback, weight)
    if method == "auto":
        best = min(candidates, key=_rank)
        name, weight = best["calibration_method"], best["weight_type"]
        for label, extra in _extra_float_sets(model, head).items():
            measure(name, caches[name][0], label, extra, caches[name][1], weight)
    for _ in range(float_search):
        start = min(candidates, key=_rank)
        for segment in conv_segments(model, head):
            if segment[0] not in start["extra"]:
                measure(start["calibration_method"], caches[start["calibration_method"]][0],
                        f"{start['float_layers']}+{segment[0]}", start["extra"] + segment, start["range_fallback"],
                        start["weight_type"])
        if min(candidates, key=_rank) is start:
            break
    best = min(candidates, key=_rank)
    best["path"].replace(out)
    return {"calibration_method": best["calibration_method"], "weight_type": best["weight_type"],
            "float_layers": best["float_layers"],
            "float_nodes": best["float_nodes"], "range_fallback": best["range_fallback"],
            "selection_images": len(selection[0]), "float_search": float_search,
            "candidates": [{k: v for k, v in c.items() if k not in ("path", "range_fallback", "extra")} for c in candidates]}


def _rank(candidate: dict[str, Any]) -> tuple[float, float, int]:
    """The smallest mean calibrated logit change, then the most decisions agreeing with fp32, then the fewest float
    nodes. The logit change leads: on ~80 validation images agreement moves in steps of one image, while the
    size of the change is what decides how many images near the threshold flip."""
    return candidate["mean_calibrated_logit_change"], -candidate["agreement"], candidate["float_nodes"]


def _selection_error(spec: ModelSpec, fp32: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    """How far int8 logits are from fp32 on the selection images, on the scale the decision is taken on."""
    calibrated = [spec.probabilities(z) for z in (fp32, int8)]
    change = np.abs(fp32 - int8) / spec.calibration.graph_temperature
    return {"agreement": float(np.mean(spec.decide(calibrated[0]) == spec.decide(calibrated[1]))),
            "mean_calibrated_logit_change": float(change.mean()), "max_calibrated_logit_change": float(change.max())}


def _extra_float_sets(model: Any, head: list[str]) -> dict[str, list[str]]:
    """Candidate layers to keep in float besides the head: the stem (first convolution and what follows it up to
    the next convolution, so its activation is not quantised on the wide range before its clip) and the last
    convolution likewise, and both."""
    segments = conv_segments(model, head)
    if len(segments) < 2:
        return {}
    return {"head+stem": segments[0], "head+last-conv": segments[-1], "head+stem+last-conv": segments[0] + segments[-1]}


def conv_segments(model: Any, head: list[str]) -> list[list[str]]:
    """Node names, one list per convolution outside `head`: the convolution and what follows it up to the next one."""
    kept = set(head)
    segments: list[list[str]] = []
    for node in model.graph.node:
        if node.name in kept:
            continue
        if node.op_type == "Conv":
            segments.append([])
        if segments:
            segments[-1].append(node.name)
    return segments


def _quantize_with(prepared: Path, out: Path, cache: Path, exclude: list[str], weights: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(prepared), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude, calibration_cache_path=str(cache))


def float_nodes(model: Any) -> list[str]:
    """Names of the nodes kept in float: everything fed, directly or not, by the last convolution's output."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        raise LungCNNInputError("the network has no convolution to quantise")
    tainted, kept = set(nodes[convs[-1]].output), []
    for node in nodes[convs[-1] + 1 :]:  # graph nodes are topologically sorted
        if tainted.intersection(node.input):
            tainted.update(node.output)
            kept.append(node.name)
    return kept


def parity(spec: ModelSpec, fp32: Predictor, int8: Predictor, data: tuple[np.ndarray, np.ndarray],
           resamples: int = 1000) -> dict[str, Any]:
    """fp32 vs int8 on labelled images: ROC-AUC of each and their difference, decision agreement, largest calibrated
    probability change. Intervals (95%): exact binomial for the agreement, a paired bootstrap over images
    (stratified by class, seed 0) for the AUC difference; images of one series are not independent, so both are
    too narrow."""
    from lungcnn.metrics.bootstrap import clopper_pearson, resample_indices

    images, labels = data
    if not len(images):
        raise LungCNNInputError("no test images to compare the int8 model with fp32 on")
    task = spec.task
    calibrated = [spec.probabilities(p.logits(images)) for p in (fp32, int8)]
    probs = [task.class_probabilities(c) for c in calibrated]
    same = spec.decide(calibrated[0]) == spec.decide(calibrated[1])
    aucs = [_auc(p, labels) for p in probs]
    report = {"images": len(images), "roc_auc_fp32": aucs[0], "roc_auc_int8": aucs[1],
              "roc_auc_difference": None, "roc_auc_difference_ci95": None,
              "decision_agreement": float(np.mean(same)),
              "decision_agreement_ci95": list(clopper_pearson(int(same.sum()), len(same))),
              "max_probability_change": float(np.abs(probs[0] - probs[1]).max()),
              "mean_probability_change": float(np.abs(probs[0] - probs[1]).mean())}
    if aucs[0] is not None:
        differences = [_auc(probs[1][i], labels[i]) - _auc(probs[0][i], labels[i])
                       for i in resample_indices(labels, resamples, seed=0)]
        report["roc_auc_difference"] = aucs[1] - aucs[0]
        report["roc_auc_difference_ci95"] = [float(v) for v in np.percentile(differences, [2.5, 97.5])]
    return report


def _auc(per_class: np.ndarray, labels: np.ndarray) -> float | None:
    """Binary: AUC of the positive column; K classes: macro one-vs-rest. None when a class is absent."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < per_class.shape[1]:
        return None
    if per_class.shape[1] == 2:
        return float(roc_auc_score(labels, per_class[:, 1]))
    return float(roc_auc_score(labels, per_class, multi_class="ovr", average="macro"))

