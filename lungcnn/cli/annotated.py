"""`lungcnn annotated --ckpt CKPT --boxes boxes.csv [--out annotated.csv] | --from-csv annotated.csv`.

Where the model looks on a CT series with radiologists' tumour boxes: within-series AUC of tumour vs tumour-free
slices, Grad-CAM peak in the box, rank of the first tumour slice, Grad-CAM mass in the lung fields
(`lungcnn.evaluation.annotated`); the figures are recomputed from the written table alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.evaluation.annotated import evaluate_series, figures


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lungcnn annotated", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a lungcnn checkpoint")
    parser.add_argument("--boxes", help="the series' boxes.csv (its files relative to its folder)")
    parser.add_argument("--out", default="annotated.csv", help="the per-slice table to write (default: %(default)s)")
    parser.add_argument("--lung-check", default=None, action=argparse.BooleanOptionalAction,
                        help="judge no slice without lungs in view (default: the checkpoint's setting)")
    parser.add_argument("--from-csv", default=None, metavar="CSV", help="only recompute the figures from a table")
    args = parser.parse_args(argv)
    if not args.from_csv and not (args.ckpt and args.boxes):
        parser.error("give --ckpt and --boxes, or --from-csv")
    result = figures(args.from_csv) if args.from_csv else evaluate_series(args.ckpt, args.boxes, args.out, args.lung_check)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
