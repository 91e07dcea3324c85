"""Fit the applicability-domain guard: a reference bank from training images, a threshold from unseen series.

The bank is the pooled backbone features of the training split's images. The threshold must come from
images of series the bank does not hold: scoring a training slice against a bank that holds it (or its
neighbouring near-copies) gives distances near 0 and a threshold that rejects new patients. Two sources of
such "new patient" scores are pooled: every training image scored against the bank without its own series
(leave-one-series-out, using the split's groups), and the validation split's images (other patients: the
split is grouped). A validation split alone is small (80 images of ~15 series on IQ-OTH/NCCD) and missed the
tail of new patients' scores; the leave-one-series-out scores add every training series. The threshold is
the `quantile` of the pooled scores times `margin`.

A new patient of a known source is not what a model trained on several sources meets at another hospital: a
source it never saw lies further from the bank than any new patient of the sources it knows (re-windowed
exports, other scanners), and a threshold from new patients flags most of it (docs/results/sources.md). With
`unseen="source"` the "new" scores are every training image's against the bank without its own source
(leave-one-source-out; the validation split, of the same sources, is not pooled): the threshold then accepts
CT as far from the bank as the training sources lie from each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lungcnn.errors import LungCNNInputError, require_bool, require_choice, require_int, require_number
from lungcnn.models.guard import KnnDistance, guard_state
from lungcnn.spec import DomainGuard

if TYPE_CHECKING:
    from lungcnn.data.labelled import Labelled

UNSEEN = ("patient", "source")


@dataclass(frozen=True)
class GuardConfig:
    """calibration.guard: how the domain guard is fitted.

    Args:
        enabled: fit a guard (true by default: a checkpoint without one answers every image, MR and photos too).
        k: score = distance to the k-th nearest training image (1 = nearest).
        quantile: the quantile of the new-patient scores the threshold starts from, in (0, 1].
        margin: factor (>= 1) on that quantile.
        unseen: what the threshold is set for: "patient" (scores of training images against the other series, and
            of the validation split) or "source" (training images against the other sources; needs two or more).
    """

    enabled: bool = True
    k: int = 1
    quantile: float = 0.99
    margin: float = 1.0
    unseen: str = "patient"

    def __post_init__(self) -> None:
        require_bool("calibration.guard.enabled", self.enabled)
        require_int("calibration.guard.k", self.k, 1)
        require_number("calibration.guard.quantile", self.quantile, 0, 1, low_open=True, high_open=False)
        require_number("calibration.guard.margin", self.margin, 1, None, low_open=False)
        require_choice("calibration.guard.unseen", self.unseen, UNSEEN)


def training_features(predictor, feature_cache: str | Path | None = None,
                      batch_size: int = 32) -> tuple[Labelled, np.ndarray]:
    """A Predictor's (PyTorch) training split, read as its checkpoint records it, and its pooled backbone features
    (N readable, F), from `feature_cache` (`lungcnn.features.cache`) where it holds them: the bank of the guard and of
    the novelty score, read once for both."""
    from lungcnn.data.labelled import labelled_images

    spec = predictor.spec
    train = labelled_images(spec.data, spec.preprocessing, spec.class_names, "train")
    return train, predictor.backbone_features(train, feature_cache, batch_size)


def fit_guard_on_splits(predictor, train: Labelled, train_features: np.ndarray, val: Labelled, config: GuardConfig,
                        val_note: str, feature_cache: str | Path | None = None,
                        batch_size: int = 32) -> tuple[DomainGuard, dict[str, torch.Tensor]]:
    """The guard of a Predictor's (PyTorch) network: bank from the training split and its features
    (`training_features`, with its series from the split file), threshold from leave-one-series-out training scores
    and the readable images of `val` (`lungcnn.data.labelled`, from unseen series). `feature_cache`: a feature cache
    folder to read `val`'s pooled features from (`lungcnn.features.cache`) instead of running the backbone."""
    unit = "group" if config.unseen == "patient" else "source"
    if unit not in train.frame:
        raise LungCNNInputError("calibration.guard.unseen=source needs a model trained on data.sources (one folder has one)")
    groups = train.frame[unit].to_numpy(str)[train.readable]
    val_features = predictor.backbone_features(val, feature_cache, batch_size)
    return fit_guard(torch.from_numpy(train_features), groups, torch.from_numpy(val_features), config, val_note)


def leave_series_out_scores(bank: torch.Tensor, groups: Sequence[str], k: int) -> np.ndarray:
    """Each bank image's score against the bank without its own series (NaN where fewer than k images remain)."""
    unit = torch.nn.functional.normalize(bank.float(), dim=1)
    similarity = unit @ unit.T
    groups = np.asarray(groups)
    similarity[torch.from_numpy(groups[:, None] == groups[None, :])] = -torch.inf
    kth = torch.topk(similarity, min(k, len(unit)), dim=1).values[:, -1]
    return torch.sqrt(torch.clamp(2 - 2 * kth, min=0)).double().numpy()  # -inf -> inf: dropped below


def fit_guard(bank: torch.Tensor, groups: Sequence[str], val_features: torch.Tensor, config: GuardConfig,
              val_note: str) -> tuple[DomainGuard, dict[str, torch.Tensor]]:
    """(the spec's DomainGuard, its tensors for the checkpoint state) from pooled backbone features (N, F) of the
    training images (`groups`: their series, or their sources where `config.unseen` is "source") and of the
    validation images."""
    if len(bank) < config.k or len(groups) != len(bank):
        raise LungCNNInputError(f"the domain guard needs at least k={config.k} readable training images, found {len(bank)}")
    by_source = config.unseen == "source"
    if by_source and len(set(groups)) < 2:
        raise LungCNNInputError(f"calibration.guard.unseen=source needs two or more sources in the training split, "
                                f"found {sorted(set(groups))}")
    module = KnnDistance(bank, config.k)
    with torch.inference_mode():
        val = module(val_features).double().numpy()
    held_out = leave_series_out_scores(bank, groups, config.k)
    held_out = held_out[np.isfinite(held_out)]
    scores = held_out if by_source else np.concatenate([held_out, val])
    if len(val) == 0:
        raise LungCNNInputError("the domain guard's threshold needs validation images; none could be read")
    threshold = float(np.quantile(scores, config.quantile) * config.margin)
    unit, units = ("source", "sources") if by_source else ("series", "series")
    details = {"quantile": config.quantile, "margin": config.margin, "unseen": config.unseen,
               "validation_images": len(val), f"leave_{unit}_out_images": len(held_out), units: len(set(groups)),
               "validation_flagged": float(np.mean(val > threshold)),
               "unseen_scores": {q: float(np.quantile(scores, p)) for q, p in
                                      (("min", 0), ("median", 0.5), ("p95", 0.95), ("max", 1))}}
    against = (f"{len(held_out)} training images against the other sources" if by_source else
               f"{len(held_out)} training images against the other series and of {len(val)} {val_note}")
    guard = DomainGuard("knn", config.k, threshold, int(bank.shape[1]), int(bank.shape[0]),
                        f"{len(bank)} training images of {len(set(groups))} {units}; "
                        f"threshold: {config.margin:g} x the {config.quantile:g} quantile of the scores of {against}",
                        details)
    return guard, guard_state(module)
