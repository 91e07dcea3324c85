"""Fit the normal bank that ranks a series' slices: how unlike normal chest CT each slice is (`spec.Novelty`).

An option (`calibration.novelty`, off): on the one annotated cancer patient, distance to the nearest *normal* training
slice ranked the tumour slices first (ROC-AUC 0.83, against 0.36 by P(malignant)), but with each tumour inpainted
away the ranking stayed, so it is not the tumour that makes those slices novel (docs/lesion.md); it is kept to
measure on the next annotated patients. Features: the pooled backbone features the head reads, standardised by the head's own
statistics (a standardising head's) or the bank's, L2-normalised; score: the distance to the k-th nearest bank
slice (`lungcnn.models.guard.KnnDistance`). No label but "normal" is used. Unstandardised, the same distance ranked
at chance: a few high-variance channels that tell sources apart dominate it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lungcnn.errors import LungCNNInputError
from lungcnn.models.guard import NOVELTY_PREFIX, KnnDistance, guard_state
from lungcnn.spec import Novelty

if TYPE_CHECKING:
    from lungcnn.data.labelled import Labelled

NORMAL = "normal"  # the class name a source's folders map to when their slices show no disease


def normal_rows(files: Any, data: Mapping[str, Any]) -> np.ndarray:
    """Which split rows (`file` as the split file names it) come from a folder mapped to `normal`.

    Several sources: `<source>/<folder>/...` against each source's `class_folders`; one root: `<folder>/...`."""
    parts = [str(f).split("/") for f in files]
    if data.get("sources"):
        folders = {(s["name"], f) for s in data["sources"] for f, c in s["class_folders"].items() if c == NORMAL}
        return np.array([len(p) > 2 and (p[0], p[1]) in folders for p in parts], dtype=bool)
    folders = {f for f, c in (data.get("class_folders") or {}).items() if c == NORMAL}
    return np.array([len(p) > 1 and p[0] in folders for p in parts], dtype=bool)


def fit_novelty(predictor, train: Labelled, train_features: np.ndarray,
                k: int = 1) -> tuple[Novelty, dict[str, torch.Tensor]] | None:
    """(the spec's Novelty, its tensors for the checkpoint state) from the normal slices of a Predictor's (PyTorch)
    training split and their features (`lungcnn.calibration.guard.training_features`), or None when that split has
    fewer than k normal slices (`normal_as: drop`, no normal folder)."""
    spec = predictor.spec
    normal = normal_rows(train.frame["file"][train.readable], spec.data)
    if normal.sum() < max(k, 1):
        return None
    bank = torch.from_numpy(train_features[normal]).float()
    standardize = getattr(predictor.net.head, "standardize", None)
    if standardize is not None:
        mean, scale = standardize.mean.detach().float(), standardize.scale.detach().float()
    else:
        mean, scale = bank.mean(dim=0), bank.std(dim=0) + 1e-6
    if not torch.isfinite(bank).all():
        raise LungCNNInputError("the normal bank's features are not finite; the network's weights may be broken")
    module = KnnDistance(bank, k, mean, scale)
    files = train.frame["file"][train.readable][normal]
    sources = sorted({str(f).split("/")[0] for f in files}) if spec.data.get("sources") else []
    where = f" ({', '.join(sources)})" if sources else ""
    novelty = Novelty(k, int(bank.shape[1]), int(bank.shape[0]),
                      f"{int(normal.sum())} normal slices of the training split{where}, standardised by "
                      f"{'the head' if standardize is not None else 'the bank'}")
    return novelty, guard_state(module, NOVELTY_PREFIX)
