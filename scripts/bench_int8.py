"""fp32 vs int8 ONNX side by side in one run: model only, end to end, decoding, cold start, and the CPU's limit.

    python scripts/bench_int8.py --fp32 model.onnx --int8 model.int8.onnx \
        --images /work/shared/data/iqothnccd-dev --out bench_int8.json

- model only: the same preprocessed images through each graph, batch 32, rounds interleaved so both see the
  same machine load; images/s.
- end to end: `lungcnn-predict` in a fresh process per model and run (decode, preprocess, model, CSV);
  images/s from the first batch to the CSV's rename.
- decoding: `load_for_model` (full-size decode then area resize) against Pillow's draft mode (libjpeg DCT
  scaling to the smallest power-of-two reduction that keeps the model's size), images/s, and how far the
  draft pixels are from the ones training saw (max and mean |difference| of the uint8 model grid, the share
  of decisions of the fp32 model that change).
- cold start: `lungcnn-predict ONE.jpg --ckpt model.int8.onnx` under `/usr/bin/time -v`: wall and peak RSS.
- stages: one core, the same images: ms per image of decoding and preprocessing (`Predictor.load`), the lung
  check (`Predictor.lungs`, when the checkpoint has it on), normalisation and each network; and the ratio of CPU
  work per image (Amdahl): (other + fp32) / (other + int8), and with an int8 network of zero cost.
  `lungcnn-predict` does all of these for every image in both precisions, so on cores kept busy the end-to-end
  ratio tends to this bound. (Wall time can beat it a little where the cores are not saturated: the decoding
  worker runs beside the two-thread network.)
- limit: the graph's multiply-adds per image (Conv and Gemm, from ONNX shape inference) times the measured
  images/s, against numpy's float32 matrix-multiply rate on all cores (an upper bound for fp32 work).
The load average (other processes) is recorded beside the figures: compare ratios, not absolute rates. Each
round's int8/fp32 ratio is kept too (the two models run back to back within a round), and the table gives
their range.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lungcnn.data.io import IMAGE_SUFFIXES
from lungcnn.data.transforms import load_for_model, to_model_grid
from lungcnn.fileio import write_json
from lungcnn.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"in ([\d.]+) s = ([\d.]+) images/s after ([\d.]+) s start-up")


def model_only(predictors: dict[str, Predictor], images: np.ndarray, rounds: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in predictors}
    for p in predictors.values():
        p.logits(images[:32])  # warm-up: session start, memory arenas
    for _ in range(rounds):
        for name, p in predictors.items():
            start = time.perf_counter()
            p.logits(images, batch_size=32)
            rates[name].append(len(images) / (time.perf_counter() - start))
    return rates


def end_to_end(models: dict[str, str], folder: Path, rounds: int, lung_check: bool = True) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in models}
    lungs = [] if lung_check else ["--no-lung-check"]  # the same for both models: each does the same work
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, model in models.items():
                done = subprocess.run([sys.executable, "-m", "lungcnn.predict", str(folder), "--ckpt", model, "--out",
                                       f"{tmp}/{name}.csv", "--no-progress", *lungs], capture_output=True, text=True,
                                      cwd=ROOT)
                match = SUMMARY.search(done.stdout)
                if done.returncode or not match:
                    raise RuntimeError(f"lungcnn-predict failed: {done.stdout}{done.stderr[-2000:]}")
                rates[name].append(float(match.group(2)))
    return rates


def stages(predictors: dict[str, Predictor], files: list[Path], lung_check: bool = True) -> dict[str, float]:
    """ms per image on one core of each step `lungcnn-predict` takes, and the end-to-end ratio they allow."""
    from lungcnn.inference.onnx_runtime import OnnxBackend
    from lungcnn.inference.reading import single_threaded_opencv

    first = predictors["fp32"]
    out: dict[str, float] = {}
    with single_threaded_opencv():  # as lungcnn-predict runs them
        images = _per_image(out, "read_ms", len(files), lambda: np.stack([first.load(f) for f in files]))
        if lung_check and first.lung_check:
            _per_image(out, "lung_check_ms", len(files), lambda: first.lungs(images))
    x = _per_image(out, "normalise_ms", len(files), lambda: first.normalise(images))
    for name, p in predictors.items():
        backend = OnnxBackend(p.backend.path, threads=1)
        backend.forward(x[:32])  # session start, memory arenas
        _per_image(out, f"network_{name}_ms", len(x), lambda b=backend: [b.forward(x[i : i + 32]) for i in range(0, len(x), 32)])
    out.update(amdahl(out))
    return out


def amdahl(ms: dict[str, float]) -> dict[str, float]:
    """int8/fp32 ratio of CPU work per image, everything but the network costing the same in both."""
    other = sum(v for k, v in ms.items() if not k.startswith("network_"))
    return {"other_ms": other, "bound_ratio": (other + ms["network_fp32_ms"]) / (other + ms["network_int8_ms"]),
            "bound_ratio_free_network": (other + ms["network_fp32_ms"]) / other}


def _per_image(out: dict[str, float], key: str, n: int, fn):
    start = time.perf_counter()
    result = fn()
    out[key] = (time.perf_counter() - start) / n * 1000
    return result


def medians(rates: dict[str, list[float]]) -> dict[str, float]:
    return {name: float(np.median(r)) for name, r in rates.items()}


def round_ratios(rates: dict[str, list[float]]) -> list[float]:
    """int8/fp32 per round: the two models ran back to back, so each ratio saw about the same machine load."""
    return [i / f for f, i in zip(rates["fp32"], rates["int8"], strict=True)]


def draft_grid(path: Path, size: int) -> np.ndarray:
    """What `load_for_model` would give with the JPEG decoded at reduced scale (8-bit gray or RGB files)."""
    from PIL import Image

    with Image.open(path) as im:
        scale = size / max(im.size)
        if scale < 1:
            im.draft(im.mode, (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
        gray = np.asarray(im.convert("L"), np.float32) / 255.0
    return to_model_grid(gray, size)


def decoding(predictor: Predictor, files: list[Path]) -> dict[str, float]:
    size, rates, grids = predictor.image_size, {}, {}
    for name, read in (("full", predictor.load), ("draft", lambda f: draft_grid(f, size))):
        start = time.perf_counter()
        grids[name] = np.stack([read(f) for f in files])
        rates[name] = len(files) / (time.perf_counter() - start)
    diff = np.abs(grids["full"].astype(np.int16) - grids["draft"].astype(np.int16))
    decisions = [predictor.spec.decide(predictor.spec.probabilities(predictor.logits(grids[k]))) for k in ("full", "draft")]
    return {"full_images_per_s": rates["full"], "draft_images_per_s": rates["draft"], "max_abs_diff": int(diff.max()),
            "mean_abs_diff": float(diff.mean()), "pixels_off_by_more_than_8": float((diff > 8).mean()),
            "decision_agreement": float(np.mean(decisions[0] == decisions[1]))}


def cold_start(model: str, image: Path, runs: int) -> dict[str, float]:
    walls, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "lungcnn.predict", str(image), "--ckpt",
                                   model, "--out", f"{tmp}/one.csv", "--no-progress"], capture_output=True, text=True,
                                  cwd=ROOT)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
            walls.append(int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3)))
            peaks.append(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024)
    return {"wall_s": float(np.median(walls)), "peak_mb": float(np.median(peaks))}


def macs_per_image(model: str) -> float:
    """Multiply-adds of the Conv and Gemm nodes for one image (weights from initializers, shapes inferred)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    graph = shape_inference.infer_shapes(onnx.load(model)).graph
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.output]}
    total = 0.0
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in weights and node.output[0] in shapes:
            out, w = shapes[node.output[0]], weights[node.input[1]]
            per_output = np.prod(w[1:]) if node.op_type == "Conv" else w[1] if len(w) > 1 else 1
            total += float(np.prod(out[1:])) * float(per_output)
    return total


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, help="the exported fp32 .onnx")
    parser.add_argument("--int8", required=True, help="its int8 version (lungcnn-export --quantize int8)")
    parser.add_argument("--images", required=True, help="a folder of JPEG slices")
    parser.add_argument("--n", type=int, default=256, help="images for the model-only and decoding figures")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-lung-check", action="store_true",
                        help="both end-to-end runs without the lung check (lungcnn-predict --no-lung-check)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    predictors = {"fp32": Predictor.from_checkpoint(args.fp32, "onnx"), "int8": Predictor.from_checkpoint(args.int8, "onnx")}
    sample = files[:: max(1, len(files) // args.n)][: args.n]
    images = np.stack([load_for_model(f, predictors["fp32"].image_size, predictors["fp32"].window) for f in sample])
    result: dict = {"cores": os.cpu_count(), "image_size": predictors["fp32"].image_size, "images": len(files)}
    rates = model_only(predictors, images, args.rounds)
    result["model_only"], result["model_only_ratio_per_round"] = medians(rates), round_ratios(rates)
    rates = end_to_end({"fp32": args.fp32, "int8": args.int8}, Path(args.images), max(1, args.rounds - 1),
                       lung_check=not args.no_lung_check)
    result["end_to_end"], result["end_to_end_ratio_per_round"] = medians(rates), round_ratios(rates)
    result["lung_check"] = predictors["fp32"].lung_check and not args.no_lung_check
    result["stages"] = stages(predictors, sample, lung_check=result["lung_check"])
    result["decoding"] = decoding(predictors["fp32"], sample)
    result["cold_start_int8"] = cold_start(args.int8, files[0], args.rounds)
    gmacs = macs_per_image(args.fp32) / 1e9
    peak = sgemm_gflops()
    result["limit"] = {"gflop_per_image": 2 * gmacs, "sgemm_gflops": peak,
                       **{f"{k}_gflops": 2 * gmacs * v for k, v in result["model_only"].items()}}
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    if args.out:
        write_json(args.out, result)
    print(table(result))
    return result


def table(r: dict) -> str:
    m, e, d, c, lim, st = r["model_only"], r["end_to_end"], r["decoding"], r["cold_start_int8"], r["limit"], r["stages"]
    steps = ", ".join(f"{k[:-3].replace('_', ' ')} {v:.1f}" for k, v in st.items() if k.endswith("_ms") and k != "other_ms")
    return "\n".join([
        f"| figure ({r['image_size']} px, {r['cores']} cores, load {r['load_average']['before'][0]:.1f}) "
        "| fp32 | int8 | int8/fp32 |",
        "|---|---|---|---|",
        f"| model only, batch 32 (images/s) | {m['fp32']:.0f} | {m['int8']:.0f} | {m['int8'] / m['fp32']:.2f}x "
        f"({_span(r['model_only_ratio_per_round'])}) |",
        f"| end to end, lungcnn-predict on {r['images']} JPEGs, lung check {'on' if r['lung_check'] else 'off'} (images/s) | "
        f"{e['fp32']:.0f} | {e['int8']:.0f} | {e['int8'] / e['fp32']:.2f}x ({_span(r['end_to_end_ratio_per_round'])}) |",
        f"| one core, ms per image: {steps} | | | bound {st['bound_ratio']:.2f}x "
        f"({st['bound_ratio_free_network']:.2f}x with a free int8 network) |",
        f"| achieved GFLOP/s ({lim['gflop_per_image']:.2f} GFLOP/image; float32 GEMM peak {lim['sgemm_gflops']:.0f}) | "
        f"{lim['fp32_gflops']:.0f} | {lim['int8_gflops']:.0f} | |",
        f"| cold start, one image (int8 .onnx) | | {c['wall_s']:.2f} s, {c['peak_mb']:.0f} MB | |",
        f"| decoding: full {d['full_images_per_s']:.0f} images/s, draft {d['draft_images_per_s']:.0f} images/s "
        f"({d['draft_images_per_s'] / d['full_images_per_s']:.2f}x); draft vs full grid: max |diff| {d['max_abs_diff']}, "
        f"mean {d['mean_abs_diff']:.2f}, {d['pixels_off_by_more_than_8']:.1%} of pixels off by > 8, "
        f"decisions agree {d['decision_agreement']:.1%} | | | |",
    ])


def _span(ratios: list[float]) -> str:
    return f"rounds {min(ratios):.2f}-{max(ratios):.2f}, n={len(ratios)}"


if __name__ == "__main__":
    main()
