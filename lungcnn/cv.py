"""`python -m lungcnn.cv summary|compare|series ...`: pool and compare grouped k-fold cross-validations.

    python -m lungcnn.cv summary --multirun multirun/iqothnccd/DATE      # or: summary RUN_DIR [RUN_DIR ...]
    python -m lungcnn.cv compare base=outputs/cv/base "flip TTA=outputs/cv/base:report_tta" --markdown
    python -m lungcnn.cv series --multirun outputs/cv/base      # series-level AUC of each series rule

`summary` prints per-fold mean ± std and pooled figures with series-bootstrap intervals and writes
cv_summary.json (`lungcnn.evaluation.crossval`); `compare` gives paired differences from the first
variant (`lungcnn.evaluation.compare`). `scripts/run_cv.sh` trains, calibrates, evaluates and summarises.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lungcnn.cli import friendly_errors
from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lungcnn.cv", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="pool one cross-validation's folds")
    s.add_argument("run_dirs", nargs="*", help="fold run folders (each with metrics.json)")
    s.add_argument("--multirun", help="a Hydra multirun folder: every job folder in it is one fold")
    s.add_argument("--out", help="summary JSON (default: cv_summary.json in the multirun folder or the runs' common parent)")
    s.add_argument("--report-dir", default="report", help="each fold's report folder (default: %(default)s)")
    c = sub.add_parser("compare", help="paired comparison of cross-validations on the same folds")
    c.add_argument("variants", nargs="+", help="NAME=MULTIRUN_DIR[:REPORT_DIR]; the first is the baseline")
    c.add_argument("--out", help="write the comparison as JSON")
    r = sub.add_parser("series", help="series-level figures of each series rule (lungcnn.evaluation.series_level)")
    r.add_argument("--multirun", required=True, help="a Hydra multirun folder of one cross-validation")
    r.add_argument("--report-dir", default="report", help="each fold's report folder (default: %(default)s)")
    r.add_argument("--out", help="write the figures as JSON")
    for q in (s, c, r):
        q.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
        q.add_argument("--seed", type=int, default=0)
    return p


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        from lungcnn.evaluation.compare import compare, markdown

        result = compare(args.variants, args.n_resamples, args.seed)
        print(markdown(result), flush=True)
        out = args.out
    elif args.command == "series":
        from lungcnn.evaluation.series_level import from_multirun, markdown

        result = from_multirun(args.multirun, report_dir=args.report_dir, n_resamples=args.n_resamples, seed=args.seed)
        print(markdown(result), flush=True)
        out = args.out
    else:
        from lungcnn.evaluation.crossval import SUMMARY_FILE, aggregate, find_runs, format_table, plain

        if bool(args.multirun) == bool(args.run_dirs):
            raise LungCNNInputError("give either RUN_DIRS or --multirun DIR (one of the two)")
        runs = find_runs(args.multirun) if args.multirun else [Path(d) for d in args.run_dirs]
        result = plain(aggregate(runs, n_resamples=args.n_resamples, seed=args.seed, report_dir=args.report_dir))
        print(format_table(result), flush=True)
        default = Path(args.multirun) if args.multirun else Path(os.path.commonpath([str(Path(r).resolve()) for r in runs]))
        out = args.out or default / SUMMARY_FILE
    if out:
        write_json(out, result)
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
