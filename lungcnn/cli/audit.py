"""Leakage audit of a folder-per-class CT data set: `lungcnn-audit DATA_DIR [--out groups.csv]`.

The checks live in `lungcnn.data.audit`; this command parses arguments, runs them and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.data.audit import CV_FOLDS, SERIES_THRESHOLD, THRESHOLD, audit_folder, format_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lungcnn-audit", description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", help="folder with one subfolder per class (e.g. 'Bengin cases', 'Malignant cases')")
    p.add_argument("--out", help="groups.csv to write (default: DATA_DIR/groups.csv, only if it does not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing DATA_DIR/groups.csv")
    p.add_argument("--threshold", type=int, default=THRESHOLD, metavar="HAMMING_BITS",
                   help=f"near-duplicate: dHash distance <= this many of 64 bits (default {THRESHOLD})")
    p.add_argument("--series-threshold", type=int, default=SERIES_THRESHOLD, metavar="HAMMING_BITS",
                   help=f"link neighbouring file numbers within this distance (default {SERIES_THRESHOLD})")
    p.add_argument("--report", default="audit.json", help="JSON report to write (default ./audit.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and cross-validation (default 0)")
    p.add_argument("--folds", type=int, default=CV_FOLDS,
                   help=f"cross-validation folds of the shortcut check (default {CV_FOLDS})")
    return p

@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = audit_folder(args.data_dir, out=args.out, force=args.force, report=args.report, threshold=args.threshold,
                          series_threshold=args.series_threshold, seed=args.seed, folds=args.folds)
    print(format_summary(report), flush=True)
    print(f"wrote {report['groups_csv']} and {args.report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
