"""Model-only inference speed of one checkpoint: PyTorch eager, channels_last, torch.compile, onnxruntime.

    python scripts/bench_inference.py --ckpt outputs/demo/checkpoints/best.calibrated.ckpt [--image-size 224] --out bench.json

Same weights and the same preprocessed images for every runtime. Batch 1 latency (p50/p95) and batch-32
throughput, each with its ratio to eager. Runtimes are measured in interleaved rounds so a burst of
load from other processes hits all of them alike; the load average is recorded beside the numbers.
`--image-size` runs the (fully convolutional) network at another size than the checkpoint's, e.g. 224
with the 128-px demo checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import signal
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from lungcnn.data.synthetic import render_patient
from lungcnn.fileio import write_json
from lungcnn.inference.onnx_export import onnx_bytes
from lungcnn.inference.onnx_runtime import cpu_count, make_session
from lungcnn.inference.predictor import Predictor
from lungcnn.models.checkpoint import build_network, load_checkpoint

Runner = Callable[[np.ndarray], object]


def images(predictor: Predictor, n: int, size: int) -> np.ndarray:
    """n normalised synthetic CT slices (N, 3, S, S), preprocessed as the Predictor does."""
    rng = np.random.default_rng(0)
    slices: list[np.ndarray] = []
    while len(slices) < n:
        slices += render_patient(rng, ["benign", "malignant"][len(slices) % 2], 4, size)
    return predictor.normalise(np.stack(slices[:n]))


def torch_runner(net: torch.nn.Module, channels_last: bool) -> Runner:
    def run(x: np.ndarray) -> object:
        t = torch.from_numpy(x)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return net(t)

    return run


def compiled_runner(net: torch.nn.Module, sample: np.ndarray, timeout: int) -> tuple[Runner | None, str]:
    """torch.compile (inductor) on CPU, given `timeout` seconds to compile batch 1 and 32; None and why if not."""

    def alarm(signum, frame):
        raise TimeoutError(f"compiling took over {timeout} s")

    net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    start = time.perf_counter()
    try:
        compiled = torch.compile(net, dynamic=False)
        run = torch_runner(compiled, channels_last=True)
        run(sample[:1])
        run(sample)
        return run, f"compiled in {time.perf_counter() - start:.0f} s (inductor, channels_last)"
    except Exception as e:  # missing C++ compiler, unsupported op, timeout...
        return None, f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def measure(run: Runner, x: np.ndarray, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all runtimes")
    parser.add_argument("--latency-iters", type=int, default=20, help="batch-1 calls per runtime per round")
    parser.add_argument("--throughput-iters", type=int, default=3, help="batch calls per runtime per round")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: cores)")
    parser.add_argument("--compile-timeout", type=int, default=300)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    threads = args.threads or cpu_count()
    torch.set_num_threads(threads)
    spec, state = load_checkpoint(args.ckpt)
    size = args.image_size or spec.preprocessing.image_size
    # The network alone (its domain guard's cost is measured by scripts/bench_ood.py).
    spec = spec.replace(preprocessing=dataclasses.replace(spec.preprocessing, image_size=size), guard=None)
    net = build_network(spec, state)
    predictor = Predictor(spec, net)
    x = images(predictor, args.batch_size, size)
    load_before = os.getloadavg()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx_bytes(net, spec)
        session, spinning = make_session(model, threads), make_session(model, threads, spin=True)
    runners: dict[str, Runner] = {
        "pytorch eager": torch_runner(net, channels_last=False),
        "pytorch channels_last": torch_runner(copy.deepcopy(net).to(memory_format=torch.channels_last), True),
    }
    notes = {}
    if args.no_compile:
        notes["torch.compile"] = "skipped: --no-compile"
    else:
        compiled, notes["torch.compile"] = compiled_runner(net, x, args.compile_timeout)
        if compiled is not None:
            runners["torch.compile"] = compiled
    runners["onnxruntime"] = lambda batch: session.run(["logit"], {"image": batch})  # as the Predictor runs it
    runners["onnxruntime, spinning"] = lambda batch: spinning.run(["logit"], {"image": batch})

    for run in runners.values():  # warm-up: first calls allocate and pick kernels
        measure(run, x[:1], 3)
        measure(run, x, 1)
    latency: dict[str, list[float]] = {name: [] for name in runners}
    batch: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            latency[name] += measure(run, x[:1], args.latency_iters)
            batch[name] += measure(run, x, args.throughput_iters)

    rows = {}
    for name in runners:
        lat = np.array(latency[name]) * 1e3
        rows[name] = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                      "images_per_s": float(args.batch_size / np.median(batch[name])),
                      "images_per_s_best": float(args.batch_size / np.min(batch[name]))}
    eager = rows["pytorch eager"]
    for row in rows.values():
        row["latency_speedup_vs_eager"] = eager["p50_ms"] / row["p50_ms"]
        row["throughput_vs_eager"] = row["images_per_s"] / eager["images_per_s"]
    result = {
        "checkpoint": str(args.ckpt), "image_size": size, "batch_size": args.batch_size, "threads": threads,
        "cores": cpu_count(), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "rounds": args.rounds, "results": rows, "notes": notes,
        "goal_onnxruntime_2x_eager_throughput": rows["onnxruntime"]["throughput_vs_eager"] >= 2.0,
    }
    print(table(result))
    if args.out:
        write_json(args.out, result)
    return result


def table(result: dict) -> str:
    throughput = f"b{result['batch_size']} img/s"
    lines = [f"inference, {result['image_size']} px, {result['threads']} threads on {result['cores']} cores "
             f"(load average {result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f})",
             f"{'runtime':<24}{'b1 p50 ms':>10}{'b1 p95 ms':>10}{'x eager':>8}"
             f"{throughput:>12}{'(best)':>8}{'x eager':>8}"]
    for name, r in result["results"].items():
        lines.append(f"{name:<24}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['latency_speedup_vs_eager']:>8.2f}"
                     f"{r['images_per_s']:>12.1f}{r['images_per_s_best']:>8.0f}{r['throughput_vs_eager']:>8.2f}")
    lines += [f"note: {k}: {v}" for k, v in result["notes"].items()]
    lines.append("x eager: batch-1 p50 speed-up and batch throughput ratio against PyTorch eager (higher is better)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
