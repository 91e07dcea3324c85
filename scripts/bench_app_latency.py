"""Latency of the clinicians' page for one uploaded 512x512 PNG, through `analyse_upload` as the page calls it.

Measures decode + preprocessing + prediction, without and with the Grad-CAM heat map, after a warm-up,
and prints p50/p95 in milliseconds; `--out` also writes them as JSON.

    python scripts/bench_app_latency.py [--ckpt PATH] [--runs 30] [--warmup 3] [--out bench.json]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lungcnn.data.synthetic import render_patient
from lungcnn.fileio import write_json
from lungcnn.inference.predictor import Predictor
from lungcnn.webapp.uploads import DEMO_CHECKPOINTS, analyse_upload

ROOT = Path(__file__).resolve().parents[1]


def sample_png(size: int = 512, seed: int = 0) -> bytes:
    """One synthetic malignant CT-like slice, encoded as an upload would arrive."""
    image = render_patient(np.random.default_rng(seed), "malignant", 1, size)[0]
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def time_it(predictor: Predictor, data: bytes, with_cam: bool, runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        assert analyse_upload(predictor, "bench.png", data, with_cam=with_cam).ok
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = analyse_upload(predictor, "bench.png", data, with_cam=with_cam)
        times.append(1000 * (time.perf_counter() - start))
        assert result.ok and (result.overlay is not None) == with_cam
    ms = np.array(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / DEMO_CHECKPOINTS[0], help="checkpoint (default: the demo's)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="side of the uploaded image in pixels")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        print(f"checkpoint not found: {args.ckpt} (run `make demo` or pass --ckpt PATH)", file=sys.stderr)
        return 2
    predictor = Predictor.from_checkpoint(args.ckpt)
    data = sample_png(args.size)
    report = {
        "checkpoint": str(args.ckpt), "model_image_size": predictor.image_size, "upload": f"{args.size}x{args.size} PNG",
        "upload_bytes": len(data), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "without_heatmap": time_it(predictor, data, False, args.runs, args.warmup),
        "with_heatmap": time_it(predictor, data, True, args.runs, args.warmup),
    }
    for key in ("without_heatmap", "with_heatmap"):
        r = report[key]
        print(f"{key:16s} p50 {r['p50_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms   ({r['runs']} runs)")
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
