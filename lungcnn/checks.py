"""Value checks that owners of config keys call on their own arguments, so every bad value reads the same.

Each class or function that uses a setting checks it where it receives it (MONAI's habit), naming the
config key: ``require_int("data.batch_size", batch_size, 1)`` raises
``LungCNNInputError("data.batch_size must be an integer >= 1, got 0")``.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Any, NoReturn

from lungcnn.errors import LungCNNInputError


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
