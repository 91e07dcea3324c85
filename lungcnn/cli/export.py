"""Export: `lungcnn-export --ckpt CKPT --format onnx [--quantize int8] [--out PATH]`.

Writes the network with its temperature calibration folded in, plus a JSON sidecar with the full
checkpoint metadata (preprocessing, classes, threshold, calibration), so `lungcnn-predict --ckpt
model.onnx` or any onnxruntime consumer needs nothing else. See `lungcnn.inference.onnx_export`.
`--quantize int8` writes `CKPT.int8.onnx` instead, checked against fp32 first
(`lungcnn.inference.quantize`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors

FORMATS = ("onnx",)
PRECISIONS = ("none", "int8")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lungcnn-export", description="Export a lungcnn checkpoint for fast inference.")
    parser.add_argument("--ckpt", required=True, help="a lungcnn checkpoint (.ckpt)")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--out", default=None,
                        help="output file (default: the checkpoint's name with .onnx, or .int8.onnx with --quantize int8)")
    parser.add_argument("--quantize", default="none", choices=PRECISIONS,
                        help="int8: static quantisation calibrated on training images, refused if its decisions "
                             "agree with fp32 on fewer than --min-agreement of the test split")
    parser.add_argument("--calibration-images", type=int, default=128, help="training images that set int8 ranges")
    parser.add_argument("--calibration-method", default="auto",
                        help="int8 activation ranges: percentile, entropy, minmax, or auto (measured on the validation split)")
    parser.add_argument("--weight-type", default="auto", choices=("auto", "int8", "uint8"),
                        help="int8 convolution weights signed or unsigned, or auto (both measured on the validation "
                             "split: unsigned avoids onnxruntime's 16-bit saturation on CPUs without VNNI)")
    parser.add_argument("--float-search", type=int, default=0,
                        help="int8: keep up to N more convolutions in float, each chosen greedily on the validation split")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="int8: the least share of test images whose decision must equal fp32's (default %(default)s)")
    parser.add_argument("--data-root", default=None, help="the data folder, if it moved since training")
    return parser.parse_args(argv)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quantize == "int8":
        from lungcnn.inference.quantize import parity_path, quantize_onnx

        onnx_path, sidecar, report = quantize_onnx(args.ckpt, args.out, data_root=args.data_root,
                                                   calibration_images=args.calibration_images,
                                                   method=args.calibration_method, weights=args.weight_type,
                                                   min_agreement=args.min_agreement,
                                                   float_search=args.float_search)
        print(f"int8 vs fp32 on {report['images']} test images: decisions agree {report['decision_agreement']:.2%}, "
              f"ROC-AUC {_auc(report['roc_auc_fp32'])} -> {_auc(report['roc_auc_int8'])}, "
              f"max probability change {report['max_probability_change']:.4f}\n"
              f"wrote {onnx_path}\nwrote {sidecar}\nwrote {parity_path(onnx_path)}", flush=True)
        return 0
    from lungcnn.inference.onnx_export import export_onnx

    onnx_path, sidecar = export_onnx(args.ckpt, args.out)
    print(f"wrote {onnx_path}\nwrote {sidecar}", flush=True)
    return 0


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
