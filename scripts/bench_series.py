"""Time the page's answer to a whole series: 100 DICOM slices of 512x512 uploaded at once (or as one zip).

Runs the page's logic as the page calls it (`analyse_study`, then `add_heatmaps` for the SHOWN_SLICES most
suspicious slices and the series CSV), on a synthetic 12-bit CT series built with pydicom, after a warm-up,
and prints seconds per run. The issue's goal is <= 10 s on 2 CPU cores; run it as
`taskset -c 0,1 python scripts/bench_series.py` to hold it to two cores.

    python scripts/bench_series.py [--ckpt PATH] [--slices 100] [--size 512] [--runs 3] [--zip] [--out bench.json]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from lungcnn.data.synthetic.dicom import ct_series
from lungcnn.fileio import write_json
from lungcnn.inference.predictor import Predictor
from lungcnn.webapp.study import SHOWN_SLICES, add_heatmaps, analyse_study, study_csv
from lungcnn.webapp.uploads import REFERENCE_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]


def answer(predictor: Predictor, uploads: list[tuple[str, bytes]]) -> float:
    """Seconds from the uploaded bytes to everything the page shows first."""
    start = time.perf_counter()
    study = analyse_study(predictor, uploads)
    for series in study.series:
        add_heatmaps(predictor, series, series.result.ranked[:SHOWN_SLICES])
    study_csv(predictor, study)
    seconds = time.perf_counter() - start
    (series,) = study.series
    assert series.result.decision is not None and sum(r.overlay is not None for r in series.slices) == SHOWN_SLICES
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / REFERENCE_CHECKPOINT,
                        help="checkpoint (default: the reference model the page serves)")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--zip", action="store_true", help="upload the series as one zip instead of separate files")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        print(f"checkpoint not found: {args.ckpt} (run `make demo` or pass --ckpt PATH)", file=sys.stderr)
        return 2
    built = time.perf_counter()
    files = ct_series(args.slices, args.size, seed=0)
    order = np.random.default_rng(1).permutation(len(files))  # uploads arrive in no particular order
    uploads = [(f"IM{int(i):05d}", files[i]) for i in order]
    if args.zip:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in uploads:
                z.writestr(f"export/{name}", data)
        uploads = [("study.zip", buf.getvalue())]
    print(f"built {args.slices} slices of {args.size}x{args.size} in {time.perf_counter() - built:.1f} s "
          f"({sum(len(d) for _, d in uploads) / 2**20:.0f} MiB uploaded{' as one zip' if args.zip else ''})")
    loaded = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.ckpt, backend="auto", with_net=True)  # as the page loads it, once
    print(f"model loaded in {time.perf_counter() - loaded:.1f} s (once per server, not per upload)")
    answer(predictor, uploads)  # warm-up
    times = [answer(predictor, uploads) for _ in range(args.runs)]
    report = {"checkpoint": str(args.ckpt), "slices": args.slices, "size": args.size, "zip": args.zip,
              "heat_maps": SHOWN_SLICES, "seconds": times, "median_s": float(np.median(times)),
              "cpus_allowed": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
              "backend": predictor.backend.name, "machine": platform.machine()}
    print(f"page answer for {args.slices} slices: median {report['median_s']:.2f} s over {args.runs} runs "
          f"({', '.join(f'{t:.2f}' for t in times)}); {report['cpus_allowed']} CPUs allowed, {report['backend']} backend")
    if args.out:  # the figures as JSON, beside the printed line
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
