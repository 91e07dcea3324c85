"""End-to-end `lungcnn-predict` throughput on a folder of 512x512 JPEG slices, per backend.

    python scripts/bench_predict.py --ckpt outputs/demo/checkpoints/best.calibrated.ckpt --n 2000 --out bench_predict.json

Generates N grey 512x512 JPEGs (synthetic CT phantoms drawn at 512 px, each with its own noise, so every
file decodes like a distinct scan) into a temp folder, then runs the real command line in a fresh process
per backend and run: decode, preprocess, model, CSV. images/s counts from the first batch request to
the CSV's rename (start-up: imports, checkpoint, ONNX export cache, worker start, excluded); the total
wall time with start-up is reported too. Other processes' load is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lungcnn.data.synthetic import render_patient
from lungcnn.fileio import write_json
from lungcnn.inference.onnx_runtime import cpu_count

SUMMARY = re.compile(r"(\d+) images \((\d+) classified, (\d+) unreadable\) in ([\d.]+) s = ([\d.]+) images/s "
                     r"after ([\d.]+) s start-up \((\w+) backend, (\d+) workers\)")


def make_jpegs(folder: Path, n: int, size: int = 512, unique: int = 24, quality: int = 90) -> float:
    """n JPEGs from `unique` rendered slices plus per-file noise; returns the mean file size in KiB."""
    rng = np.random.default_rng(0)
    slices: list[np.ndarray] = []
    while len(slices) < unique:
        slices += render_patient(rng, ["benign", "malignant"][len(slices) % 2], 3, size)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        noisy = np.clip(slices[i % unique].astype(np.int16) + rng.integers(-4, 5, (size, size)), 0, 255).astype(np.uint8)
        path = folder / f"slice_{i:05d}.jpg"
        Image.fromarray(noisy, "L").save(path, quality=quality)
        total += path.stat().st_size
    return total / n / 1024


def run_predict(folder: Path, ckpt: str, backend: str, out: Path, batch_size: int, workers: int | None,
                extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lungcnn.predict", str(folder), "--ckpt", ckpt, "--out", str(out), "--backend", backend,
           "--batch-size", str(batch_size), "--no-progress", *extra]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - start
    match = SUMMARY.search(done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"lungcnn-predict failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-2000:]}")
    images, _, unreadable, seconds, rate, startup, name, used_workers = match.groups()
    return {"images": int(images), "unreadable": int(unreadable), "seconds": float(seconds),
            "images_per_s": float(rate), "startup_s": float(startup), "wall_s": wall,
            "images_per_s_with_startup": int(images) / wall, "backend": name, "workers": int(used_workers)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--n", type=int, default=2000, help="number of JPEGs")
    parser.add_argument("--backends", nargs="+", default=["onnx", "torch"], choices=["onnx", "torch", "lightning"],
                        help="lightning: the torch network under trainer.predict (--devices 1)")
    parser.add_argument("--workers", type=int, nargs="+", default=[None], help="worker counts to try (default: the CLI's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the best and median are reported")
    parser.add_argument("--images", default=None, help="use this folder instead of generating JPEGs")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="lungcnn-bench-"))
    try:
        folder = Path(args.images) if args.images else tmp / "jpegs"
        kib = None if args.images else make_jpegs(folder, args.n)
        # Export (and cache) the ONNX model once, so no run's start-up includes it twice.
        run_predict(folder, args.ckpt, "onnx", tmp / "warm.csv", args.batch_size, None, []) if "onnx" in args.backends else None
        rows = []
        load_before = os.getloadavg()
        for _ in range(args.repeats):  # interleaved, so load from other processes spreads over all settings
            for backend in args.backends:
                for workers in args.workers:
                    extra = ["--devices", "1"] if backend == "lightning" else []
                    result = run_predict(folder, args.ckpt, "torch" if backend == "lightning" else backend,
                                         tmp / "p.csv", args.batch_size, workers, extra)
                    rows.append({**result, "setting": backend})
        summary = {}
        for backend in args.backends:
            for workers in sorted({r["workers"] for r in rows if r["setting"] == backend}):
                runs = [r for r in rows if r["setting"] == backend and r["workers"] == workers]
                rates = [r["images_per_s"] for r in runs]
                summary[f"{backend}, {workers} workers"] = {
                    "images_per_s_median": float(np.median(rates)), "images_per_s_best": max(rates),
                    "startup_s_median": float(np.median([r["startup_s"] for r in runs])),
                    "images_per_s_with_startup_median": float(np.median([r["images_per_s_with_startup"] for r in runs])),
                    "runs": len(runs)}
        result = {"checkpoint": args.ckpt, "images": args.images or f"{args.n} synthetic 512x512 grey JPEGs",
                  "mean_file_kib": kib, "batch_size": args.batch_size, "cores": cpu_count(),
                  "load_average_before": load_before, "load_average_after": os.getloadavg(),
                  "summary": summary, "runs": rows,
                  "goal_200_images_per_s": {k: v["images_per_s_median"] >= 200 for k, v in summary.items()}}
        print(table(result))
        if args.out:
            write_json(args.out, result)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(result: dict) -> str:
    lines = [f"lungcnn-predict end to end: {result['images']}"
             + (f" (mean {result['mean_file_kib']:.0f} KiB)" if result["mean_file_kib"] else "")
             + f", batch {result['batch_size']}, {result['cores']} cores, load average "
             f"{result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}",
             f"{'backend':<26}{'img/s':>9}{'(best)':>8}{'start-up s':>12}{'img/s incl. start-up':>22}"]
    for name, r in result["summary"].items():
        lines.append(f"{name:<26}{r['images_per_s_median']:>9.1f}{r['images_per_s_best']:>8.1f}"
                     f"{r['startup_s_median']:>12.2f}{r['images_per_s_with_startup_median']:>22.1f}")
    lines.append("img/s: median over runs, start-up excluded (imports, checkpoint, worker start); goal >= 200")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
