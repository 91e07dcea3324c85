"""Choosing the decision threshold from a sensitivity target.

Missing a malignancy costs far more than a false alarm, so the operating point is set by the sensitivity
we require and, among thresholds meeting it, the highest one (fewest false positives) is chosen.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lungcnn.errors import LungCNNInputError
from lungcnn.evaluation.metrics import check_binary


def threshold_for_sensitivity(probs: Any, labels: Any, target: float = 0.98) -> float:
    """Highest t with sensitivity(prob >= t) >= target on these data.

    It is the k-th highest positive probability, k = ceil(target * n_positives): any higher t drops that
    positive (and every tie with it). On new data the achieved sensitivity can be lower; choose the target
    with that margin in mind.
    """
    p, y = check_binary(probs, labels)
    target = float(target)
    if not 0.0 < target <= 1.0:
        raise LungCNNInputError(f"target sensitivity must be in (0, 1], got {target}")
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
    return float(pos[k - 1])
