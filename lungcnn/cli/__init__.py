"""Shared behaviour of the command-line entry points: bad input ends in one clear line, exit code 2.

Only a `LungCNNInputError` (or one that Hydra's `instantiate` wrapped) becomes that line; every other
exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from lungcnn.errors import input_error_in

F = TypeVar("F", bound=Callable)


def friendly_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            cause = input_error_in(e)
            if cause is None:
                raise
            print(f"lungcnn: error: {cause}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


# name -> (module, one line): what `lungcnn --help` lists; each module has `main()` and parses its own arguments.
COMMANDS = {
    "train": ("lungcnn.cli.train", "fit one configuration (Hydra key=value overrides; -m for sweeps)"),
    "calibrate": ("lungcnn.cli.calibrate", "fit calibration, operating threshold and domain guard on validation"),
    "evaluate": ("lungcnn.cli.evaluate", "the test report of a checkpoint (split or labelled folder)"),
    "predict": ("lungcnn.cli.predict", "classify files, folders, DICOM series into a CSV"),
    "export": ("lungcnn.cli.export", "ONNX (optionally int8) export for fast inference"),
    "cv": ("lungcnn.cli.cv", "repeated grouped cross-validation: run, summary, compare, series, crossfit"),
    "publish": ("lungcnn.cli.publish", "a small float16 model file to ship, with its model card"),
    "annotated": ("lungcnn.cli.annotated", "where the model looks on a series with tumour boxes (AUC, heat-map peak)"),
    "audit": ("lungcnn.cli.audit", "leakage audit of a folder-per-class data set (groups.csv)"),
    "doctor": ("lungcnn.cli.doctor", "is this machine ready? one OK/WARN/FAIL line per check"),
    "app": ("lungcnn.cli.app", "the clinicians' page (Streamlit), loopback unless sign-in is configured"),
    "app-password": ("lungcnn.cli.app_password", "hash a password for the page's sign-in"),
    "sweep-report": ("lungcnn.cli.sweep_report", "tables and plots of a finished sweep"),
    "synthetic": ("lungcnn.cli.synthetic", "write the synthetic demo data set"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items())
    return f"usage: lungcnn <command> [arguments]\n\ncommands:\n{rows}\n\n`lungcnn <command> --help` for each command's own."


def main(argv: list[str] | None = None) -> int:
    """`lungcnn <command> ...`: hand the rest of the command line to that command's `main()`."""
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"lungcnn: error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"lungcnn {argv[0]}", *argv[1:]]  # Hydra commands read sys.argv; argparse ones read it too
    result = module.main()
    return result if isinstance(result, int) else 0
