"""Export: `lungcnn-export --ckpt CKPT --format onnx [--out PATH]`.

Writes the network with its temperature calibration folded in, plus a JSON sidecar with the full
checkpoint metadata (preprocessing, classes, threshold, calibration), so `lungcnn-predict --ckpt
model.onnx` or any onnxruntime consumer needs nothing else. See `lungcnn.inference.onnx_export`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors

FORMATS = ("onnx",)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lungcnn-export", description="Export a lungcnn checkpoint for fast inference.")
    parser.add_argument("--ckpt", required=True, help="a lungcnn checkpoint (.ckpt)")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--out", default=None, help="output file (default: the checkpoint's name with .onnx)")
    return parser.parse_args(argv)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from lungcnn.inference.onnx_export import export_onnx

    onnx_path, sidecar = export_onnx(args.ckpt, args.out)
    print(f"wrote {onnx_path}\nwrote {sidecar}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
