"""How far int8 moves the model's outputs, against how far the fp32 model moves under noise no one can see.

    python scripts/int8_sensitivity.py --ckpt models/lungcnn-iqothnccd-binary.ckpt \
        --int8 model.int8.onnx --split val --out sensitivity.json

On one split of the checkpoint (validation by default: it makes no choice, but read the test split only for
context), each row compares a perturbed graph with the fp32 graph: decisions that agree, mean and largest change of
the calibrated logit (logit / T, the scale the decision is taken on) and the ROC-AUC difference.
- int8: the graph `lungcnn export --quantize int8` wrote.
- input noise: the fp32 graph on the same images plus uniform noise of +-0.5 gray level (less than the JPEG's own
  rounding), seeds 0-4: what a model this sensitive does with an invisible change of its input.
- weights only: every quantised convolution's weights rounded to int8 per output channel as `quantize_static`
  does (symmetric, absmax), activations float: the share of the int8 change the weights alone cause.
- one layer alone (`--alone K`): only one of the first K convolutions with what follows it up to the next one
  (its clip), each by itself, in int8 (minmax ranges from the export's calibration images), everything else float.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from lungcnn.fileio import write_json
from lungcnn.inference import quantize
from lungcnn.inference.int8_ranges import activation_ranges, write_calibration_cache
from lungcnn.inference.onnx_export import onnx_bytes
from lungcnn.inference.onnx_runtime import OnnxBackend
from lungcnn.inference.predictor import Predictor
from lungcnn.models.checkpoint import build_guard, build_network, load_checkpoint


def compare(spec, fp32: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    probs = [spec.task.class_probabilities(spec.probabilities(z))[:, 1] for z in (fp32, other)]
    return {**quantize._selection_error(spec, fp32, other),
            "roc_auc_difference": float(roc_auc_score(labels, probs[1]) - roc_auc_score(labels, probs[0]))}


def weights_only(prepared: Path, out: Path, float_nodes: set[str]) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(prepared))
    weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.name not in float_nodes}
    for init in model.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            scale = np.abs(w).reshape(len(w), -1).max(1) / 127
            scale = np.where(scale == 0, 1, scale).reshape(-1, *[1] * (w.ndim - 1))
            init.CopyFrom(numpy_helper.from_array((np.round(w / scale) * scale).astype(np.float32), init.name))
    onnx.save(model, str(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--int8", required=True, help="its int8 graph (lungcnn export --quantize int8)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--alone", type=int, default=0, help="quantise each of the first K convolutions alone")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--data-root", default=None, help="a data folder used whole instead of the checkpoint's splits")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec, state = load_checkpoint(args.ckpt)
    result: dict = {"split": args.split, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_file, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        fp32_file.write_bytes(onnx_bytes(build_network(spec, state), spec, build_guard(spec, state)))
        reference = Predictor(spec, backend=OnnxBackend(fp32_file))
        images, labels = quantize.split_images(spec, args.split, args.data_root)
        base = reference.logits(images)
        result["images"], result["positives"] = len(labels), int(labels.sum())
        rows = result["rows"]
        rows["int8"] = compare(spec, base, Predictor(spec, backend=OnnxBackend(args.int8)).logits(images), labels)
        x = reference.normalise(images)
        std = np.asarray(spec.preprocessing.std, np.float32)[:, None, None]
        for seed in range(5):
            noise = np.random.default_rng(seed).uniform(-0.5, 0.5, images.shape).astype(np.float32)[:, None] / 255 / std
            z = np.concatenate([reference.backend.logits((x[i : i + 32] + noise[i : i + 32]).astype(np.float32))
                                for i in range(0, len(x), 32)])
            rows[f"input noise +-0.5 gray level, seed {seed}"] = compare(spec, base, z, labels)
        quant_pre_process(str(fp32_file), str(prepared))
        model = onnx.load(str(prepared))
        head = quantize.float_nodes(model)
        wfile = weights_only(prepared, Path(tmp) / "weights.onnx", set(head))
        rows["weights only"] = compare(spec, base, Predictor(spec, backend=OnnxBackend(wfile)).logits(images), labels)
        if args.alone:
            calibration = quantize.split_images(spec, "train", args.data_root, args.calibration_images)[0]
            ranges, _ = activation_ranges(prepared, quantize.calibration_batches(reference, calibration), "minmax")
            cache = Path(tmp) / "ranges.json"
            write_calibration_cache(ranges, cache)
            for segment in quantize.conv_segments(model, head)[: args.alone]:
                out = Path(tmp) / "alone.onnx"
                quantize._quantize_with(prepared, out, cache, [n.name for n in model.graph.node if n.name not in segment], "int8")
                z = Predictor(spec, backend=OnnxBackend(out)).logits(images)
                rows[f"only {segment[0]} in int8"] = compare(spec, base, z, labels)
    if args.out:
        write_json(args.out, result)
    print(f"{args.split}: {result['images']} images ({result['positives']} positive)")
    print("| graph vs fp32 | decisions agree | mean / max abs change of logit/T | ROC-AUC difference |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['agreement']:.1%} | {r['mean_calibrated_logit_change']:.2f} / "
              f"{r['max_calibrated_logit_change']:.2f} | {r['roc_auc_difference']:+.4f} |")
    return result


if __name__ == "__main__":
    main()
