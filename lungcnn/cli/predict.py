"""`lungcnn-predict PATH... --ckpt CKPT [--out predictions.csv] [--series-out series.csv] [--backend auto|torch|onnx]`.

Classifies image files and folders (DICOM included) into a CSV, one row per image, in lungcnn's prediction
schema (`lungcnn.inference.schema`); the work is `lungcnn.inference.batch.predict`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.inference.predictor import BACKENDS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lungcnn-predict", description="Classify lung CT images (files, folders, DICOM) into a CSV, one row per image.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    parser.add_argument("--ckpt", required=True, help="a lungcnn checkpoint (.ckpt) or an exported .onnx with its sidecar")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (atomically; default: %(default)s)")
    parser.add_argument("--series-out", default=None, metavar="CSV",
                        help="also write one row per series (DICOM series, --groups groups, else folders or zips)")
    parser.add_argument("--groups", default=None, metavar="CSV",
                        help="file,group CSV (paths relative to it) grouping non-DICOM images into series")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto: PyTorch on a GPU, else onnxruntime on CPU (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding worker processes (default: half the cores, at least 1)")
    parser.add_argument("--devices", type=_devices, default=None, help="run under Lightning's trainer.predict on N devices")
    parser.add_argument("--strategy", default=None, help="Lightning strategy for --devices (ddp, ...)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes for a multi-node Lightning strategy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--lung-check", default=None, action=argparse.BooleanOptionalAction,
                        help="judge no slice without lungs in view (default: the checkpoint's preprocessing.lung_check)")
    parser.add_argument("--export-window", default=None, metavar="WINDOW",
                        help="how the 8-bit images (JPEG, PNG) were exported: a preset (lung, mediastinal, iqothnccd) "
                             "or LEVEL,WIDTH in HU (--export-window=-600,1500); they are re-windowed into the model's "
                             "window as training reads a source with that window (default: as they are; DICOM is "
                             "always read from Hounsfield units)")
    return parser.parse_args(argv)


def _read_as(export_window: str) -> str:
    return "read as they are" if export_window == "as_is" else f"read from export window {export_window}"


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from lungcnn.inference.batch import predict

    summary = predict(args.paths, args.ckpt, args.out, args.backend, args.batch_size, args.workers, args.devices,
                      args.strategy, args.num_nodes, progress=not args.no_progress, series_out=args.series_out,
                      groups=args.groups, lung_check=args.lung_check, export_window=args.export_window)
    if summary.get("classified") is None:
        return 0  # not the rank that wrote the file
    print(f"lungcnn-predict: {summary['images']} images ({summary['classified']} classified, "
          f"{summary['unreadable']} unreadable) in {summary['seconds']:.2f} s = {summary['images_per_s']:.1f} images/s "
          f"after {summary['startup_s']:.2f} s start-up ({summary['backend']} backend, {summary['workers']} workers, "
          f"JPEG/PNG {_read_as(summary['export_window'])}); "
          f"wrote {summary['out']}" + (f" and {summary['series']} series to {args.series_out}" if "series" in summary else ""),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
