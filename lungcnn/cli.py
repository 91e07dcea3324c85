"""Shared behaviour of the command-line entry points: bad input ends in one clear line, exit code 2."""

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
    """The LungCNNInputError behind `error`, if any (Hydra's instantiate wraps errors from targets)."""
    while error is not None:
        if isinstance(error, LungCNNInputError):
            return error
        error = error.__cause__ or error.__context__
    return None
