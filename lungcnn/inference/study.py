"""A patient's study: slice predictions of each series -> the series result, under the checkpoint's `SeriesRule`.

`summarise` is the one place a series result is made: `lungcnn-predict --series-out` (one row per series in
the schema's series table) and the page (the series result first, then the slices by suspicion) call it.
`analyse_study` is the page's logic for a whole series uploaded at once (many files, or zips): grouping
(`lungcnn.data.series`), one batched classification per series, the summary; heat maps only for the slices
the page shows (`add_heatmaps`), since Grad-CAM costs several times a slice's classification.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.aggregation import aggregate
from lungcnn.data.series import ZIP_SUFFIX, ArchiveLimits, Series, Source, group_series, open_zip
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.predictor import NO_LUNGS, OUT_OF_DOMAIN, Predictor
from lungcnn.inference.uploads import UploadLimits, UploadResult, add_heatmap, format_percent, one_sentence
from lungcnn.spec import ModelSpec

log = logging.getLogger(__name__)


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
        most_suspicious: index of the slice with the highest P(target), or None.
        counts: per-series tallies (`schema.SERIES_COUNTS`).
    """

    key: str
    names: tuple[str, ...]
    probabilities: np.ndarray
    probability: float
    decision: str | None
    most_suspicious: int | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ranked(self) -> list[int]:
        """Readable slice indices, most suspicious first (ties in slice order)."""
        readable = np.flatnonzero(np.isfinite(self.probabilities))
        return sorted(readable.tolist(), key=lambda i: (-self.probabilities[i], i))

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
              in_domain: Sequence[bool | None] | None = None, lungs: Sequence[bool | None] | None = None) -> SeriesResult:
    """One series from its slices' calibrated P(target) in slice order (NaN marks an unreadable slice), the domain
    guard's verdicts and the lung check's (False: flagged; None or no list: no guard / no check). Slices without
    lungs in view (a series runs from the neck to the abdomen) and flagged ones are left out of the score; the
    domain rule counts only slices with lungs in view, so a series' abdominal slices do not make it "out of domain"."""
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
    top = int(np.nanargmax(judged))
    return SeriesResult(key, tuple(names), judged, score, series_decision(spec, score), top, counts)


# -- the page: a whole series uploaded at once ---------------------------------------------------------------
@dataclass
class StudySeries:
    """One series on the page: its result and its slices' results in slice order (heat maps added on demand)."""

    result: SeriesResult
    slices: list[UploadResult]


@dataclass
class Study:
    """Everything uploaded as one study: its series, and uploads refused whole (a zip with a path trick...)."""

    series: list[StudySeries]
    refused: list[UploadResult]


def analyse_study(predictor: Predictor, uploads: Sequence[tuple[str, bytes]], *, limits: UploadLimits = UploadLimits(),
                  archive: ArchiveLimits | None = None) -> Study:
    """Group uploaded files and zips into series, classify every slice in batches, and summarise each series.

    No heat map is computed here: `add_heatmaps` does it for the slices the page shows. Never raises for a bad
    file: an unreadable slice counts in its series, a refused zip is listed in `refused` with its reason.
    """
    archive = archive or ArchiveLimits(max_member_bytes=limits.max_bytes)
    sources, refused = [], []
    for raw_name, data in uploads:
        name = Path(raw_name or "upload").name or "upload"  # a browser sends a bare name; never trust a path in it
        if name.lower().endswith(ZIP_SUFFIX):
            try:
                sources.extend(open_zip(data, name, archive))
            except LungCNNInputError as e:
                refused.append(UploadResult(name, False, str(e)))
        else:
            sources.append(Source(name, "uploaded files", data=data))
    return Study([_classify_series(predictor, s, limits) for s in group_series(sources)], refused)


def _classify_series(predictor: Predictor, series: Series, limits: UploadLimits) -> StudySeries:
    spec = predictor.spec
    base = {"threshold": spec.decision.threshold if spec.task.thresholded else float("nan"), "calibrated": spec.is_calibrated}
    slices, images = [], []
    for source in series.sources:
        try:
            image = predictor.load(source.data, name=source.name, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        except LungCNNInputError as e:
            slices.append(UploadResult(source.name, False, one_sentence(str(e), source.name), **base))
            continue
        except Exception:  # a decoder bug on one slice must not lose the series
            log.exception("unexpected error reading slice %r", source.name)
            slices.append(UploadResult(source.name, False, f"{source.name}: this file could not be analysed because of "
                                                           "an unexpected error.", **base))
            continue
        images.append(image)
        slices.append(UploadResult(source.name, True, image=image, **base))
    readable = [r for r in slices if r.ok]
    if readable:
        for r, p in zip(readable, predictor.predict_images(np.stack(images), [r.name for r in readable])):
            r.prediction = p
    target = spec.series_target
    probs = [r.prediction.probabilities[target] if r.ok else float("nan") for r in slices]
    verdicts = [r.prediction.in_domain if r.ok else None for r in slices]
    lungs = [r.prediction.lungs_in_view if r.ok else None for r in slices]
    return StudySeries(summarise(spec, series.key, [r.name for r in slices], probs, verdicts, lungs), slices)


SHOWN_SLICES = 5  # slices the page shows with heat maps, most suspicious first


def add_heatmaps(predictor: Predictor, series: StudySeries, indices: Sequence[int]) -> None:
    """Grad-CAM for the slices at `indices` that are readable and have none yet (the page's shown slices)."""
    for i in indices:
        r = series.slices[i]
        if r.ok and r.overlay is None and r.cam_note is None:
            add_heatmap(predictor, r)


def study_csv(predictor: Predictor, study: Study) -> bytes:
    """The series table (`schema.series_columns`) as UTF-8 CSV, one row per series."""
    target = predictor.spec.series_target
    rows = [s.result.row(target) for s in study.series]
    return pd.DataFrame(rows, columns=schema.series_columns(target)).to_csv(index=False).encode("utf-8")


def series_explanation(predictor: Predictor, result: SeriesResult) -> str:
    """Sentences (Markdown) saying why the series result is what it is, and which slice to look at first."""
    spec = predictor.spec
    side = "at or above" if result.probability >= spec.series_threshold else "below"
    top = result.most_suspicious
    flagged, no_lungs = result.counts.get(schema.N_OUT_OF_DOMAIN, 0), result.counts.get(schema.N_NO_LUNGS, 0)
    left_out = (f" {flagged} slice(s) unlike the training images were left out of it." if flagged else "")
    left_out += f" {no_lungs} slice(s) without lungs in view were not judged." if no_lungs else ""
    return (f"Reported as **{result.decision}** because the series probability ({spec.series.describe()}) is "
            f"{format_percent(result.probability)}, {side} the series threshold of **{format_percent(spec.series_threshold)}**."
            f"{left_out} Most suspicious slice: **{Path(result.names[top]).name}** (slice {top + 1} of {len(result.names)}, "
            f"{format_percent(result.probabilities[top])}).")
