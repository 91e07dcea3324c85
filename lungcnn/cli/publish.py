"""`lungcnn publish CALIBRATED_CKPT OUT.ckpt --data-root DIR`: a small model file to ship, with its card.

What `make reference-model` runs after training and calibrating: OUT.ckpt in float16, OUT.split.csv, the test
figures of that file recorded in it, and OUT.md, the model card (`lungcnn.webapp.publish`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.webapp.publish import publish


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lungcnn publish", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("ckpt", help="a calibrated checkpoint (lungcnn.calibrate's output) whose run folder holds split.csv")
    p.add_argument("out", help="the file to write (.ckpt); OUT.split.csv and OUT.md go beside it")
    p.add_argument("--data-root", help="the data folder as the file should name it (e.g. a relative path); "
                   "not for a model trained on data.sources (their folders are named relative to here)")
    p.add_argument("--recipe", default="", help="the commands that made the model, for the card")
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples of the test figures")
    return p.parse_args(argv)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    publish(args.ckpt, args.out, args.data_root, args.recipe, args.n_resamples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
