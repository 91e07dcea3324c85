"""Typed evaluation results: a fold's (or pooled folds') predictions, and figures scored with their intervals.

Cross-validation code passes these instead of positional tuples, so a field is read by name; JSON outputs keep
their shape through `Scored.as_json` and `lungcnn.fileio.write_json`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from lungcnn.evaluation.multiclass_report import flat_metrics
from lungcnn.metrics import binary_metrics, bootstrap_ci


@dataclass(frozen=True)
class Scored:
    """Figures of one set of predictions and their bootstrap 95% intervals (NaN where undefined)."""

    metrics: Mapping[str, Any]
    ci95: Mapping[str, tuple[float, float]]

    @classmethod
    def of(cls, metric: Callable[..., Mapping[str, Any]], x: np.ndarray, labels: np.ndarray, *, groups: np.ndarray,
           n_resamples: int = 1000, seed: int = 0, keep: Sequence[str] | None = None) -> Scored:
        """`metric(x, labels)` and its series-bootstrap interval (`groups` resampled whole); only `keep` if given."""
        point = metric(x, labels)
        ci = bootstrap_ci(metric, x, labels, n_resamples=n_resamples, seed=seed, groups=groups)
        names = [k for k in point if keep is None or k in keep]
        return cls({k: point[k] for k in names}, {k: tuple(ci[k]) for k in names if k in ci})

    def as_json(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "ci95": {k: list(v) for k, v in self.ci95.items()}}


@dataclass(frozen=True)
class Predictions:
    """Per test image (N rows): its file, series (`groups`), label index, class probabilities (N, K) uncalibrated
    and calibrated, and the decision (class index) its own fold's checkpoint made."""

    names: tuple[str, ...]
    files: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    uncalibrated: np.ndarray
    calibrated: np.ndarray
    decisions: np.ndarray

    def rows(self, which: np.ndarray) -> Predictions:
        """The rows `which` (indices or a boolean mask), in that order."""
        return Predictions(self.names, *(getattr(self, f.name)[which] for f in fields(self)[1:]))

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        return cls(parts[0].names, *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)[1:]))

    def score(self, idx: np.ndarray, calibrated: bool = True) -> dict[str, float]:
        """flat_metrics of the rows `idx`: calibrated with the folds' own decisions, or uncalibrated argmax."""
        probs, decisions = (self.calibrated, self.decisions[idx]) if calibrated else (self.uncalibrated, None)
        flat = flat_metrics(probs[idx], self.labels[idx], list(self.names), decisions)
        if len(self.names) == 2:  # the ECE of P(malignant), as binary_metrics and the repeated-CV summary give it
            flat["ece"] = binary_metrics(probs[idx, 1], self.labels[idx])["ece"]
        return flat

    def target(self) -> TargetPredictions:
        """The binary view: P(target class), the last class, uncalibrated and under the fold's own calibration."""
        return TargetPredictions(self.names[-1], self.files, self.groups, self.labels,
                                 self.uncalibrated[:, -1], self.calibrated[:, -1])


@dataclass(frozen=True)
class TargetPredictions:
    """A binary fold's rows with P(target) (N,) uncalibrated and calibrated (labels: 1 = target)."""

    target: str
    files: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    uncalibrated: np.ndarray
    calibrated: np.ndarray
