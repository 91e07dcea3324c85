"""Temperature scaling: one scalar T that divides the logits before sigmoid/softmax.

It fixes over/under-confidence without changing the ranking (AUC) or the decisions at 0.5 / argmax, which
makes it the safest calibration for a small validation set. T is fitted on log scale (so it stays > 0) by
minimising the NLL with L-BFGS in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungcnn.errors import LungCNNInputError
from lungcnn.metrics.classification import check_labels

# A T outside this range means the fit data are (nearly) separable or degenerate, not that the model is
# really that mis-calibrated; we clamp rather than return probabilities that are all 0/1.
T_MIN, T_MAX = 0.05, 20.0


@dataclass(frozen=True)
class TemperatureFit:
    """Result of `fit_temperature`: the temperature and the fit-data NLL before (T=1) and after."""

    temperature: float
    nll_before: float
    nll_after: float
    message: str | None = None


def fit_temperature(logits: Any, labels: Any, max_iter: int = 200) -> TemperatureFit:
    """Fit T on validation logits (N,) [binary] or (N, K) [K-class]; never worse than T=1 on these data.

    With only one class present there is nothing to calibrate against, so T=1 is returned with a message
    instead of an error (the caller can log it and carry on).
    """
    z, y = _check_logits_labels(logits, labels)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    nll_one = _nll(zt, yt, torch.tensor(0.0, dtype=torch.float64))
    if np.unique(y).size < 2:
        return TemperatureFit(1.0, nll_one, nll_one, "only one class in the labels: no temperature can be "
                              "learned from one class, using T=1.0")
    if _separable(z, y):
        # NLL then falls all the way to T -> 0: there is no finite optimum, only overconfidence.
        return TemperatureFit(1.0, nll_one, nll_one, "the fit data are perfectly separated (every image ranked "
                              "right): NLL has no finite minimum, so no temperature can be learned; using T=1.0")

    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=int(max_iter), tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _nll_tensor(zt, yt, log_t)
        loss.backward()
        return loss

    opt.step(closure)
    message = None
    t = math.exp(float(log_t.detach()))
    if not math.isfinite(t):
        t, message = 1.0, "temperature optimisation diverged; using T=1.0"
    elif not T_MIN <= t <= T_MAX:
        message = (f"fitted temperature {t:.3g} clamped to [{T_MIN}, {T_MAX}]: the fit data are (nearly) "
                   "separable or too few to calibrate on")
        t = min(max(t, T_MIN), T_MAX)
    nll_t = _nll(zt, yt, torch.tensor(math.log(t), dtype=torch.float64))
    if not math.isfinite(nll_t) or nll_t > nll_one:
        return TemperatureFit(1.0, nll_one, nll_one, "temperature scaling did not improve NLL; using T=1.0")
    return TemperatureFit(t, nll_one, nll_t, message)


def _separable(z: np.ndarray, y: np.ndarray) -> bool:
    if z.ndim == 1:
        return bool(z[y == 0].max() < z[y == 1].min())
    return bool((z.argmax(axis=1) == y).all())


def _nll_tensor(z: torch.Tensor, y: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    scaled = z / torch.exp(log_t)
    if z.ndim == 1:
        return F.binary_cross_entropy_with_logits(scaled, y.to(torch.float64))
    return F.cross_entropy(scaled, y)


def _nll(z: torch.Tensor, y: torch.Tensor, log_t: torch.Tensor) -> float:
    with torch.no_grad():
        return float(_nll_tensor(z, y, log_t))


def _check_logits(logits: Any) -> np.ndarray:
    z = np.array(logits, dtype=np.float64)
    if z.ndim not in (1, 2) or (z.ndim == 2 and z.shape[1] < 2):
        raise LungCNNInputError(
            f"logits must have shape (N,) for binary or (N, K>=2) for K-class, got {z.shape}"
        )
    if not np.all(np.isfinite(z)):
        raise LungCNNInputError("logits contain NaN or infinity")
    return z


def _check_logits_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = _check_logits(logits)
    k = 2 if z.ndim == 1 else z.shape[1]
    return z, check_labels(labels, n=z.shape[0], num_classes=k)
