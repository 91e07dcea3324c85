"""A patient's series: slice predictions -> the series result, under the checkpoint's `SeriesRule`.

`summarise` is the one place a series result is made: `lungcnn predict --series-out` (one row per series in the
schema's series table) and the page's study view (`lungcnn.webapp.study`) call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lungcnn.data.aggregation import aggregate
from lungcnn.inference import schema
from lungcnn.inference.predictor import NO_LUNGS, OUT_OF_DOMAIN
from lungcnn.spec import ModelSpec


@dataclass(frozen=True)
class SeriesResult:
    """One series' result.

    Args:
        key: the series (UID, group or folder).
        names: its slices in slice order.
        probabilities: calibrated P(target) per slice in that order, NaN where the slice could not be read or the
            domain guard flagged it or it has no lungs in view (the page shows no probability for such a slice).
        probability: the series probability (NaN when no slice was readable or the series is out of domain).
        decision: the series decision, `OUT_OF_DOMAIN` when too few slices are in the model's domain, `NO_LUNGS`
            when no readable slice has lungs in view, or None when no slice was readable.
        most_suspicious: index of the judged slice ranked first, or None.
        counts: per-series tallies (`schema.SERIES_COUNTS`).
        ranking: what orders the judged slices (NaN elsewhere): their novelty when the model has a normal bank
            (`spec.Novelty`, an option left off: docs/lesion.md); None: `probabilities` (P(target)) order them.
    """

    key: str
    names: tuple[str, ...]
    probabilities: np.ndarray
    probability: float
    decision: str | None
    most_suspicious: int | None
    counts: dict[str, int] = field(default_factory=dict)
    ranking: np.ndarray | None = None

    @property
    def ranked_by_novelty(self) -> bool:
        return self.ranking is not None

    @property
    def ranked(self) -> list[int]:
        """Judged slice indices, most suspicious first (ties in slice order)."""
        score = self.probabilities if self.ranking is None else self.ranking
        return sorted(np.flatnonzero(np.isfinite(score)).tolist(), key=lambda i: (-score[i], i))

    def row(self, target: str) -> dict[str, Any]:
        return schema.series_row(target, self.key, len(self.names), self.probability, self.decision,
                                 None if self.most_suspicious is None else self.names[self.most_suspicious], self.counts)


def series_decision(spec: ModelSpec, probability: float) -> str:
    """The series' class under the spec's series threshold: the target, else the other class (binary) or "not <target>"."""
    target = spec.series_target
    if probability >= spec.series_threshold:
        return target
    others = [c for c in spec.class_names if c != target]
    return others[0] if len(others) == 1 else f"not {target}"


def summarise(spec: ModelSpec, key: str, names: Sequence[str], probabilities: Sequence[float],
              in_domain: Sequence[bool | None] | None = None, lungs: Sequence[bool | None] | None = None,
              novelty: Sequence[float] | None = None) -> SeriesResult:
    """One series from its slices' calibrated P(target) in slice order (NaN marks an unreadable slice), the domain
    guard's verdicts and the lung check's (False: flagged; None or no list: no guard / no check). Slices without
    lungs in view (a series runs from the neck to the abdomen) and flagged ones are left out of the score; the
    domain rule counts only slices with lungs in view, so a series' abdominal slices do not make it "out of domain".
    `novelty` (per slice, NaN or None without a normal bank) ranks the judged slices when every judged one has it;
    the series probability and decision stay P(target)'s."""
    p = np.asarray(probabilities, dtype=np.float64)
    readable = np.isfinite(p)
    no_lungs = readable & np.array([v is False for v in (lungs or [None] * len(p))], dtype=bool)
    flagged = readable & ~no_lungs & np.array([v is False for v in (in_domain or [None] * len(p))], dtype=bool)
    counts = {schema.N_UNREADABLE: int((~readable).sum()), schema.N_NO_LUNGS: int(no_lungs.sum()),
              schema.N_OUT_OF_DOMAIN: int(flagged.sum())}
    judged = np.where(flagged | no_lungs, np.nan, p)
    if not readable.any():
        return SeriesResult(key, tuple(names), judged, float("nan"), None, None, counts)
    with_lungs = readable & ~no_lungs
    if not with_lungs.any():
        return SeriesResult(key, tuple(names), judged, float("nan"), NO_LUNGS, None, counts)
    if (with_lungs & ~flagged).sum() < spec.series.min_in_domain * with_lungs.sum():
        return SeriesResult(key, tuple(names), judged, float("nan"), OUT_OF_DOMAIN, None, counts)
    score = aggregate(spec.series.method, judged, spec.series.k)
    new = np.full(len(p), np.nan) if novelty is None else np.asarray(novelty, np.float64)
    ranking = np.where(np.isfinite(judged), new, np.nan)
    ranking = ranking if np.isfinite(ranking).sum() == np.isfinite(judged).sum() else None
    top = int(np.nanargmax(judged if ranking is None else ranking))
    return SeriesResult(key, tuple(names), judged, score, series_decision(spec, score), top, counts, ranking)
