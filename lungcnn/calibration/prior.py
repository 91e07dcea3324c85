"""Prior correction: undo what class-balanced training did to the probabilities.

With `data.imbalance=sampler` (or `loss` weights) the network learns as if every class were equally
common, so its raw probabilities answer "how likely, if classes were balanced?". On data with the
training split's class mix, adding log(prior_k) - log(1/K) to each logit (logit adjustment; Saerens
et al. 2002, Menon et al. 2021) restores the right prior. Temperature scaling alone cannot: it only
stretches logits around 0, it cannot move them. The shift is derived, not fitted; T is then fitted on
the shifted logits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError

log = logging.getLogger(__name__)
BALANCING = ("sampler", "loss")


def prior_shift(train_counts: Sequence[int], imbalance: str) -> float | list[float]:
    """The logit shift for a model trained with `imbalance` on a split with `train_counts` per class.

    Binary (2 counts): one number added to the logit, log(n1 / n0). K classes: one number per class.
    No balancing (`imbalance="none"`): zero.
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or (counts <= 0).any():
        raise LungCNNInputError(f"prior correction needs a positive image count for every class, got {list(train_counts)}")
    shift = np.log(counts / counts.sum()) - np.log(1.0 / counts.size) if imbalance in BALANCING else np.zeros(counts.size)
    if counts.size == 2:
        return float(shift[1] - shift[0])
    return [float(s) for s in shift]


def prior_shift_of(data: Mapping[str, Any]) -> float | list[float]:
    """`prior_shift` from a checkpoint's training-data record (`spec.data`); 0 when it lacks the counts."""
    counts, imbalance = data.get("train_class_counts"), data.get("imbalance")
    if not counts or imbalance is None:
        log.warning("the checkpoint does not record its training class counts: no prior correction")
        return 0.0
    return prior_shift(counts, imbalance)
