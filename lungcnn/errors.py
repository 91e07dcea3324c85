"""Two kinds of failure, told apart by their type.

- Bad input: everything a user can get wrong (an image file, a folder, a command-line argument, a config
  value, a checkpoint or predictions file) raises `LungCNNInputError` with a message that names the thing
  and says what was expected. Entry points (`lungcnn.cli.friendly_errors`) and the app show that one
  line, and commands exit with code 2.
- Bugs: a state that no input can cause (arrays of mismatched shapes built by our own code, a caller
  breaking a function's contract) raises a plain Python exception (ValueError, TypeError, RuntimeError,
  ...), which propagates with its full traceback. Never raise `LungCNNInputError` for those: it would
  hide the traceback and tell the user their input was wrong.

Owners of config keys check their own arguments with the `require_*` helpers below (MONAI's habit), naming the
key, so every bad value reads the same: ``require_int("data.batch_size", 0, 1)`` raises
``LungCNNInputError("data.batch_size must be an integer >= 1, got 0")``.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Collection
from typing import Any, NoReturn


class LungCNNInputError(ValueError):
    """Bad input from the user: an unreadable image, a missing folder, a bad setting, a foreign checkpoint."""


def fail(key: str, expected: str, value: Any) -> NoReturn:
    raise LungCNNInputError(f"{key} must be {expected}, got {value!r}")


def require_int(key: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """`value` if it is an integer >= `minimum` (or None when `optional`), else LungCNNInputError naming `key`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        fail(key, f"an integer >= {minimum}" + (" or null" if optional else ""), value)
    return int(value)


def require_number(key: str, value: Any, low: float, high: float | None = None, *, low_open: bool,
                   high_open: bool = True, optional: bool = False) -> float | None:
    """`value` as a float if it lies in the interval (NaN never does), else LungCNNInputError naming `key`."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or (value < high if high_open else value <= high))
    if not ok:
        closing = ")" if high_open or high is None else "]"
        interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}{closing}"
        fail(key, f"a number in {interval}" + (" or null" if optional else ""), value)
    return float(value)


def require_choice(key: str, value: Any, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        fail(key, f"one of {sorted(choices)}", value)
    return value


def require_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(key, "true or false", value)
    return value


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
