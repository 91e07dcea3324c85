"""`lungcnn doctor` (`make doctor`): one OK / WARN / FAIL line per check of this machine; always exits 0.

FAIL: something `make demo` or the default config needs is missing or broken; WARN: optional or absent by
choice (no GPU, no shared data, no browser for the UI test). The checks are `lungcnn.training.doctor`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lungcnn.training.doctor import format_checks, run_checks


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="lungcnn doctor", description=__doc__.splitlines()[0]).parse_args(argv)
    print(format_checks(run_checks()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
