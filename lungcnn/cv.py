"""`python -m lungcnn.cv run|summary|compare|series ...`: repeated grouped cross-validation, the project's yardstick.

    python -m lungcnn.cv run outputs/rcv --repeats 3 --folds 5 experiment=iqothnccd data.root=...
    python -m lungcnn.cv run outputs/loso --by-source experiment=multisource     # leave one source out
    python -m lungcnn.cv summary --multirun multirun/iqothnccd/DATE      # or: summary RUN_DIR [RUN_DIR ...]
    python -m lungcnn.cv compare base=outputs/rcv/seed0 "flip TTA=outputs/rcv/seed0:report_tta"
    python -m lungcnn.cv series --multirun outputs/rcv/seed0     # series-level AUC of each series rule
    python -m lungcnn.cv crossfit outputs/rcv --method platt [--apply CKPT --to CKPT2 | --ensemble]

`run` trains R x K folds as one Hydra multirun (pass `hydra/launcher=joblib` to run jobs in parallel),
calibrates and evaluates each fold and pools each repeat (`lungcnn.evaluation.repeated`); `summary` pools one
k-fold run (`lungcnn.evaluation.crossval`); `compare` gives paired differences from the first variant on the
same folds (`lungcnn.evaluation.compare`); `series` scores each series rule on one CV run
(`lungcnn.evaluation.series_level`); `crossfit` re-scores a `run` with calibration and threshold fitted on the other
folds' out-of-fold outputs, and with `--apply CKPT --to NEW` gives a checkpoint that calibration fitted on every
fold (`lungcnn.evaluation.crossfit`).
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
    p = argparse.ArgumentParser(prog="python -m lungcnn.cv", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", allow_abbrev=False, help="repeated grouped k-fold CV end to end")
    r.add_argument("out", help="run folder: OUT/seed<s>/fold<k> per job, OUT/repeated_cv.json")
    r.add_argument("overrides", nargs="*", help="Hydra overrides for lungcnn.train (experiment=..., data.root=...)")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--ckpt", default="best", help="each fold's best (validation AUC) or last checkpoint")
    r.add_argument("--calibrate", nargs="*", default=[], metavar="KEY=VALUE",
                   help="lungcnn.calibrate arguments, e.g. method=isotonic decision=balanced tta=flip")
    r.add_argument("--report", default="report", help="each fold's report folder (another name: re-evaluate)")
    r.add_argument("--by-source", action="store_true",
                   help="leave one of data.sources out per job instead of k folds (lungcnn.evaluation.by_source)")
    s = sub.add_parser("summary", allow_abbrev=False, help="pool one cross-validation's folds")
    s.add_argument("run_dirs", nargs="*", help="fold run folders (each with metrics.json)")
    s.add_argument("--multirun", help="a Hydra multirun folder: every job folder in it is one fold")
    s.add_argument("--out", help="summary JSON (default: cv_summary.json in the multirun folder or the runs' common parent)")
    s.add_argument("--report-dir", default="report", help="each fold's report folder (default: %(default)s)")
    c = sub.add_parser("compare", allow_abbrev=False, help="paired comparison of cross-validations on the same folds")
    c.add_argument("variants", nargs="+", help="NAME=MULTIRUN_DIR[:REPORT_DIR]; the first is the baseline")
    c.add_argument("--out", help="write the comparison as JSON")
    e = sub.add_parser("series", allow_abbrev=False,
                       help="series-level figures of each series rule (lungcnn.evaluation.series_level)")
    e.add_argument("--multirun", required=True, help="a Hydra multirun folder of one cross-validation")
    e.add_argument("--report-dir", default="report", help="each fold's report folder (default: %(default)s)")
    e.add_argument("--out", help="write the figures as JSON")
    f = sub.add_parser("crossfit", allow_abbrev=False,
                       help="calibration and threshold fitted on other folds' out-of-fold outputs (binary)")
    f.add_argument("out", help="a `run` folder (OUT/seed<s>/fold<k>)")
    f.add_argument("--method", default="platt", help="platt or isotonic (default %(default)s)")
    f.add_argument("--target-sensitivity", type=float, default=0.98)
    f.add_argument("--report-dir", default="report", help="each fold's report folder (default: %(default)s)")
    f.add_argument("--apply", metavar="CKPT", help="write CKPT with the calibration fitted on every fold (needs --to)")
    f.add_argument("--to", metavar="PATH", help="where --apply writes (never over CKPT)")
    f.add_argument("--ensemble", action="store_true",
                   help="also score the ensemble of the repeats' models (each image: mean logit of the R models "
                        "that never saw it)")
    for q in (r, s, c, e, f):
        q.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
        q.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse; `run`'s Hydra overrides may also follow its options (`run OUT --repeats 3 experiment=...`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "run" or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        args.overrides = [*args.overrides, *extra]
    return args


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "run" and args.by_source:
        from lungcnn.evaluation import by_source

        print(by_source.run(args.out, args.overrides, args.ckpt, args.n_resamples, args.seed)["markdown"], flush=True)
        return 0
    if args.command == "run":
        from lungcnn.evaluation.repeated import format_summary, run

        calibration = dict(_key_value(item) for item in args.calibrate)
        result = run(args.out, args.overrides, args.repeats, args.folds, args.first_seed, args.ckpt, calibration,
                     args.report, args.n_resamples)
        print(format_summary(result), flush=True)
        return 0
    if args.command == "crossfit":
        from lungcnn.evaluation.repeated import crossfit

        result = crossfit(args.out, args.method, args.target_sensitivity, args.report_dir, args.n_resamples,
                          args.apply, args.to, args.ensemble)
        print(result.pop("text"), flush=True)
        return 0
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


def _key_value(item: str) -> tuple[str, object]:
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise LungCNNInputError(f"--calibrate takes KEY=VALUE items, got {item!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


if __name__ == "__main__":
    sys.exit(main())
