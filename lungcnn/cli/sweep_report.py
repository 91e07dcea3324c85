"""Report a finished sweep: `lungcnn-sweep-report MULTIRUN_DIR` or `lungcnn-sweep-report --storage URL --study NAME`.

Writes sweep.csv and sweep.md (every job's overrides and metrics), best.json (the best configuration and the
command that reruns it) and objective_vs_<parameter>.png per swept parameter (lungcnn/sweeps/report.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.errors import LungCNNInputError
from lungcnn.sweeps.report import DIRECTIONS, format_summary, from_multirun, from_study, write_report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lungcnn-sweep-report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", nargs="?", help="a multirun folder (hydra.sweep.dir)")
    parser.add_argument("--storage", help="an Optuna storage URL (hydra.sweeper.storage), instead of a folder")
    parser.add_argument("--study", help="the study name (hydra.sweeper.study_name), with --storage")
    parser.add_argument("--out", help="output folder (default: MULTIRUN_DIR/report; required with --storage)")
    parser.add_argument("--metric", help="the objective (default: the jobs' optimized_metric; "
                        "for a study, a label for its value)")
    parser.add_argument("--direction", choices=DIRECTIONS, help="default: the sweeper's direction, else maximize")
    return parser.parse_args(argv)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if bool(args.multirun_dir) == bool(args.storage):
        raise LungCNNInputError("give a multirun folder or --storage URL --study NAME (one of the two)")
    if args.storage:
        if not (args.study and args.out):
            raise LungCNNInputError("--storage needs --study NAME and --out DIR")
        table = from_study(args.storage, args.study, metric=args.metric or "objective")
    else:
        table = from_multirun(args.multirun_dir, metric=args.metric, direction=args.direction)
    written = write_report(table, args.out or f"{args.multirun_dir}/report")
    print(format_summary(table, written), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
