"""Choosing the decision threshold from a sensitivity target.

Missing a malignancy costs far more than a false alarm, so the operating point is set by the sensitivity
we require and, among thresholds meeting it, the highest one (fewest false positives) is chosen. The
threshold is then placed halfway (in logit space) to the next lower score on these data: the same
decisions here, but a margin on both sides for new images instead of sitting on one validation image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError
from lungcnn.metrics.classification import check_binary


def threshold_for_sensitivity(probs: Any, labels: Any, target: float = 0.98) -> float:
    """A threshold t with sensitivity(prob >= t) >= target on these data, with the fewest false positives.

    The strictest such threshold is the k-th highest positive probability p_k, k = ceil(target * n_pos);
    t lies halfway in logit space between p_k and the highest score below it, so every decision on these
    data is the same as at p_k. On new data the achieved sensitivity can be lower; choose the target with
    that margin in mind.
    """
    p, y = check_binary(probs, labels)
    target = float(target)
    if not 0.0 < target <= 1.0:
        raise LungCNNInputError(f"calibration.target_sensitivity must be in (0, 1], got {target}")
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        raise LungCNNInputError(
            "no malignant (label 1) examples: a sensitivity target cannot be met or measured"
        )
    n = pos.size
    k = min(n, max(1, math.ceil(target * n)))
    # Settle float rounding (0.98 * 50 may not be exactly 49) with the test callers will apply: k/n >= target.
    while k > 1 and (k - 1) / n >= target:
        k -= 1
    while k < n and k / n < target:
        k += 1
    strictest = float(pos[k - 1])
    below = p[p < strictest]
    if below.size == 0:
        return strictest
    return _midpoint_logit(strictest, float(below.max()))


def _midpoint_logit(high: float, low: float) -> float:
    eps = 1e-12
    hi, lo = np.clip([high, low], eps, 1 - eps)
    mid = (math.log(hi / (1 - hi)) + math.log(lo / (1 - lo))) / 2
    t = 1.0 / (1.0 + math.exp(-mid))
    return t if low < t <= high else high
