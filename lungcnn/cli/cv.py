"""`lungcnn cv run|summary|compare|series|crossfit ...`: repeated grouped cross-validation, the project's yardstick.

    lungcnn cv run outputs/rcv --repeats 3 --folds 5 experiment=iqothnccd data.root=...
    lungcnn cv run outputs/loso --by-source experiment=multisource      # leave one source out, 3 seeds
    lungcnn cv summary --multirun multirun/iqothnccd/DATE      # or: summary RUN_DIR [RUN_DIR ...]
    lungcnn cv compare base=outputs/rcv/seed0 "flip TTA=outputs/rcv/seed0:report_tta"
    lungcnn cv series --multirun outputs/rcv/seed0     # series-level AUC of each series rule
    lungcnn cv crossfit outputs/rcv --method platt [--apply CKPT --to CKPT2 | --ensemble]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.evaluation import by_source, compare, crossval, repeated, series_level
from lungcnn.fileio import write_json

ARGS = {  # each subcommand's own options: (flags, keyword arguments of add_argument)
    "run": [("out",), ("overrides", dict(nargs="*", help="Hydra overrides (experiment=..., data.root=...)")),
            ("--repeats", dict(type=int, default=3)), ("--folds", dict(type=int, default=5)),
            ("--first-seed", dict(type=int, default=0)), ("--ckpt", dict(default="best", help="best or last")),
            ("--calibrate", dict(nargs="*", default=[], metavar="KEY=VALUE", help="lungcnn calibrate's options")),
            ("--report", dict(default="report", help="each fold's report folder (another name: re-evaluate)")),
            ("--by-source", dict(action="store_true", help="leave one of data.sources out per job, not k folds"))],
    "summary": [("run_dirs", dict(nargs="*")), ("--multirun",), ("--out",), ("--report-dir", dict(default="report"))],
    "compare": [("variants", dict(nargs="+", help="NAME=MULTIRUN_DIR[:REPORT_DIR]; the first is the baseline")), ("--out",)],
    "series": [("--multirun", dict(required=True)), ("--report-dir", dict(default="report")), ("--out",)],
    "crossfit": [("out",), ("--method", dict(default="platt", help="platt or isotonic")),
                 ("--target-sensitivity", dict(type=float, default=0.98)), ("--report-dir", dict(default="report")),
                 ("--apply", dict(metavar="CKPT")), ("--to", dict(metavar="PATH")), ("--ensemble", dict(action="store_true"))],
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lungcnn cv", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, options in ARGS.items():
        p = sub.add_parser(name, allow_abbrev=False)
        for flags, *kwargs in [*options, ("--n-resamples", dict(type=int, default=1000)), ("--seed", dict(type=int, default=0))]:
            p.add_argument(flags, **(kwargs[0] if kwargs else {}))
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "run" or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":  # its Hydra overrides may also follow its options (`run OUT --repeats 3 experiment=...`)
        args.overrides = [*args.overrides, *extra]
    return args


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    result, out, calibration = None, None, repeated.calibration_options(getattr(a, "calibrate", []))
    if a.command == "run" and a.by_source:
        text = by_source.run(a.out, a.overrides, a.ckpt, a.n_resamples, a.seed, calibration, a.repeats, a.first_seed)["markdown"]
    elif a.command == "run":
        text = repeated.format_summary(repeated.run(a.out, a.overrides, a.repeats, a.folds, a.first_seed, a.ckpt,
                                                    calibration, a.report, a.n_resamples))
    elif a.command == "crossfit":
        text = repeated.crossfit(a.out, a.method, a.target_sensitivity, a.report_dir, a.n_resamples, a.apply, a.to,
                                 a.ensemble)["text"]
    elif a.command == "compare":
        result, out = compare.compare(a.variants, a.n_resamples, a.seed), a.out
        text = compare.markdown(result)
    elif a.command == "series":
        result = series_level.from_multirun(a.multirun, report_dir=a.report_dir, n_resamples=a.n_resamples, seed=a.seed)
        text, out = series_level.markdown(result), a.out
    else:
        result, default = crossval.summarise_runs(a.run_dirs, a.multirun, a.n_resamples, a.seed, a.report_dir)
        text, out = crossval.format_table(result), a.out or default
    if out:
        write_json(out, result)
    print(text + (f"\nwrote {out}" if out else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
