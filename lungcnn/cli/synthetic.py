"""``python -m lungcnn.data.synthetic OUT_DIR``: write the demo data set and say what was written."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.data.synthetic.folder import make_synthetic_dataset, summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lungcnn.data.synthetic",
        description="Write the synthetic CT-like demo data set (drawn images, NOT medical data).",
    )
    parser.add_argument("out_dir", help="folder to create (must be new, empty, or an earlier synthetic set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic data set")
    return parser


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = make_synthetic_dataset(
        os.path.abspath(args.out_dir), seed=args.seed, image_size=args.image_size, overwrite=args.overwrite
    )
    print(summary(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
