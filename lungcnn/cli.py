"""Shared behaviour of the command-line entry points: bad input ends in one clear line, exit code 2.

Only a `LungCNNInputError` (or one that Hydra's `instantiate` wrapped) becomes that line; every other
exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from lungcnn.errors import LungCNNInputError

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


def input_error_in(error: BaseException | None) -> LungCNNInputError | None:
    """`error` if it is a LungCNNInputError, or the one a Hydra `instantiate` wrapper was raised from; else None.

    Only that explicit wrapping counts: a bug raised while an input error was being handled (whose
    ``__context__`` is the input error) stays a bug, with its traceback.
    """
    hydra_errors = sys.modules.get("hydra.errors")  # not imported: then nothing can be Hydra's wrapper
    wrapper = hydra_errors.InstantiationException if hydra_errors else ()
    while isinstance(error, wrapper):
        error = error.__cause__
    return error if isinstance(error, LungCNNInputError) else None
