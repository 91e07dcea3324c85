"""The value a training job returns to a Hydra sweeper (`optimized_metric`).

A value that was not measured must never look like one: under `trainer.fast_dev_run` the metrics come from one
batch (a one-class batch gives ROC AUC 0.0), and a metric can be NaN (one class in the validation split). Such a
job returns the worst value for the sweeper's direction (-inf when maximising, +inf when minimising): Optuna
records the trial as complete but it never wins, and a smoke-test sweep still runs to its end. (Optuna fails a
trial that returns NaN, and the Hydra plugin then stops with no best trial.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from lungcnn.errors import LungCNNInputError

log = logging.getLogger(__name__)

WORST = {"maximize": -math.inf, "minimize": math.inf}
SPLITS = ("val", "test")


def objective_value(result: Mapping[str, Any], optimized_metric: str, *, fast_dev_run: bool,
                    direction: str | None) -> float:
    """The objective of one job; the worst value for `direction` when it was not measured.

    Args:
        result: the metrics `lungcnn.train.train` returns ({"val": {...}, "test": {...}}).
        optimized_metric: "val/NAME" or "test/NAME".
        fast_dev_run: the trainer ran one batch per stage (no measurement).
        direction: the sweeper's direction, "maximize" or "minimize"; None when the sweeper has none (NaN then).
    """
    split, _, name = str(optimized_metric).partition("/")
    if split not in SPLITS or not name:
        raise LungCNNInputError(f"optimized_metric={optimized_metric!r}: expected val/NAME or test/NAME")
    worst = WORST.get(str(direction), math.nan)
    if fast_dev_run:
        log.warning("fast_dev_run: %s is one batch, not a measurement; the sweeper gets %s", optimized_metric, worst)
        return worst
    metrics = result.get(split) or {}
    if name not in metrics:
        message = (f"optimized_metric={optimized_metric!r} was not computed; this run has "
                   f"{', '.join(f'{split}/{k}' for k in sorted(metrics)) or f'no {split} metrics'}")
        if direction is None:  # no sweeper optimises it (a single run, a grid sweep): the run itself succeeded
            log.warning(message)
            return worst
        raise LungCNNInputError(message)
    value = float(metrics[name])
    if math.isnan(value):
        log.warning("%s is NaN (undefined on this split); the sweeper gets %s", optimized_metric, worst)
        return worst
    return value


def sweeper_direction() -> str | None:
    """The running sweeper's optimisation direction (Optuna's `direction`), or None outside such a sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    direction = HydraConfig.get().sweeper.get("direction")
    return str(direction) if isinstance(direction, str) else None
