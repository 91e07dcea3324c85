"""The page's study view: a whole series uploaded at once, its result first, then the slices by suspicion.

`analyse_study` is the page's logic for a whole series uploaded at once (many files, or zips): grouping
(`lungcnn.data.series`), one batched classification per series, the summary; heat maps only for the slices
the page shows (`add_heatmaps`), since Grad-CAM costs several times a slice's classification.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungcnn.data.series import ZIP_SUFFIX, ArchiveLimits, Series, Source, group_series, open_zip
from lungcnn.errors import LungCNNInputError
from lungcnn.inference import schema
from lungcnn.inference.predictor import Predictor
from lungcnn.inference.series import SeriesResult, summarise
from lungcnn.webapp.uploads import UploadLimits, UploadResult, add_heatmap, format_percent, one_sentence

log = logging.getLogger(__name__)


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
    novelty = [r.prediction.novelty if r.ok else float("nan") for r in slices]
    return StudySeries(summarise(spec, series.key, [r.name for r in slices], probs, verdicts, lungs, novelty), slices)


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
            f"{format_percent(result.probabilities[top])}"
            + ("; ranked first as the slice most unlike normal chest CT)." if result.ranked_by_novelty else ")."))
