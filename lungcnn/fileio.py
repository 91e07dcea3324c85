"""Atomic writes: every file lungcnn writes goes to a temporary sibling and is renamed into place.

A crash mid-write then leaves the old file (or nothing), never half a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as strict JSON (NaN and infinities as null: an undefined figure, e.g. AUC with one class), sorted keys."""
    write_text(path, json.dumps(plain(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def plain(x: Any, finite: bool = True) -> Any:
    """Plain Python types for JSON and checkpoint metadata: mappings (str keys), lists, bool, int, float, str.

    numpy scalars and arrays and dataclasses (typed results) become their plain equivalents; with `finite`,
    NaN and infinities become None (strict JSON), else they stay floats.
    """
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain(getattr(x, f.name), finite) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): plain(v, finite) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [plain(v, finite) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) or not finite else None
    return x.item() if isinstance(x, np.generic) else x
