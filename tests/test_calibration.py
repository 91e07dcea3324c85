"""Calibration: temperature scaling, isotonic maps and the sensitivity-driven threshold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from lungcnn.calibration import (
    TemperatureFit,
    apply_isotonic,
    fit_isotonic,
    fit_temperature,
    threshold_for_sensitivity,
)
from lungcnn.errors import LungCNNInputError
from lungcnn.task import make_task

BINARY = make_task("binary", ["benign", "malignant"])


def _binary_data(n: int = 20000, seed: int = 0, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """True logits z and labels drawn from sigmoid(z): perfectly calibrated at T=1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    return z, y


def _multiclass_data(n: int = 20000, k: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, k))
    y = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)  # Gumbel-max == a draw from softmax(z)
    return z, y


# --- temperature scaling ---------------------------------------------------------------------------------

def test_temperature_recovers_known_binary_temperature() -> None:
    z, y = _binary_data()
    fit = fit_temperature(3.0 * z, y)
    assert isinstance(fit, TemperatureFit)
    assert fit.temperature == pytest.approx(3.0, rel=0.05)
    assert fit.nll_after < fit.nll_before
    assert fit.message is None


def test_temperature_recovers_known_multiclass_temperature() -> None:
    z, y = _multiclass_data()
    fit = fit_temperature(3.0 * z, y)
    assert fit.temperature == pytest.approx(3.0, rel=0.05)
    assert fit.nll_after < fit.nll_before


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_temperature_never_makes_nll_worse(scale: float) -> None:
    z, y = _binary_data(n=500, seed=3)
    fit = fit_temperature(scale * z, y)
    assert fit.nll_after <= fit.nll_before
    # The reported NLL is the real NLL of the returned temperature on the fit data.
    p = np.clip(BINARY.probabilities(scale * z, temperature=fit.temperature), 1e-15, 1 - 1e-15)
    assert fit.nll_after == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-9)


def test_temperature_one_class_returns_one_with_message() -> None:
    z = np.linspace(-2, 2, 50)
    for label in (0, 1):
        fit = fit_temperature(z, np.full(50, label))
        assert fit.temperature == 1.0
        assert fit.nll_after == fit.nll_before
        assert fit.message and "one class" in fit.message


def test_temperature_separable_data_keeps_one_not_collapsed() -> None:
    z = np.r_[np.linspace(-6, -1, 20), np.linspace(1, 6, 20)]
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    fit = fit_temperature(z, y)
    assert fit.temperature == 1.0 and fit.nll_after == fit.nll_before
    assert fit.message and "perfectly separated" in fit.message
    k_class = fit_temperature(np.eye(3)[[0, 1, 2, 0]] * 4, np.array([0, 1, 2, 0]))
    assert k_class.temperature == 1.0 and "separated" in k_class.message


@pytest.mark.parametrize(
    ("logits", "labels", "error"),
    [
        (np.array([0.1, np.nan]), np.array([0, 1]), LungCNNInputError),  # NaN logit
        (np.array([0.1, 0.2]), np.array([0, 2]), LungCNNInputError),  # label 2 in a binary task
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1]), ValueError),  # length mismatch: the caller's bug
        (np.zeros((3, 2, 2)), np.array([0, 1, 0]), LungCNNInputError),  # wrong rank
        (np.array([0.1, 0.2]), np.array([0.0, 0.5]), LungCNNInputError),  # non-integer label
    ],
)
def test_temperature_rejects_bad_input(logits: np.ndarray, labels: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        fit_temperature(logits, labels)
    assert isinstance(caught.value, LungCNNInputError) == (error is LungCNNInputError)


# --- isotonic --------------------------------------------------------------------------------------------

def _skewed_probs(n: int = 400, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true_p = rng.random(n)
    y = (rng.random(n) < true_p).astype(np.int64)
    return true_p**2, y  # a monotone distortion isotonic regression can undo


def test_isotonic_is_monotone_and_matches_sklearn() -> None:
    p, y = _skewed_probs()
    params = fit_isotonic(p, y)
    grid = np.linspace(0, 1, 1001)
    out = apply_isotonic(params, grid)
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= 0 and out.max() <= 1
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    np.testing.assert_allclose(apply_isotonic(params, grid), ref.predict(grid), atol=1e-12)


def test_isotonic_params_round_trip_through_json() -> None:
    p, y = _skewed_probs()
    params = fit_isotonic(p, y)
    assert set(params) == {"x", "y"}
    assert all(type(v) is float for v in params["x"] + params["y"])
    back = json.loads(json.dumps(params))
    assert back == params
    np.testing.assert_array_equal(apply_isotonic(back, p), apply_isotonic(params, p))


def test_isotonic_rejects_multiclass_and_bad_params() -> None:
    with pytest.raises(LungCNNInputError, match="binary only"):
        fit_isotonic(np.full((4, 2), 0.5), np.array([0, 1, 0, 1]))
    with pytest.raises(LungCNNInputError, match="binary only"):
        apply_isotonic({"x": [0.0, 1.0], "y": [0.0, 1.0]}, np.full((4, 2), 0.5))
    with pytest.raises(LungCNNInputError):
        apply_isotonic({"x": [0.0, 1.0], "y": [1.0, 0.0]}, np.array([0.5]))  # decreasing map
    with pytest.raises(LungCNNInputError):
        apply_isotonic({"x": [0.0, 1.0]}, np.array([0.5]))


def test_isotonic_one_class_is_identity_with_message() -> None:
    params = fit_isotonic(np.array([0.2, 0.7, 0.9]), np.array([1, 1, 1]))
    assert "one class" in params["message"]
    np.testing.assert_allclose(apply_isotonic(params, np.array([0.2, 0.7])), [0.2, 0.7])


# --- threshold -------------------------------------------------------------------------------------------

def _sensitivity(p: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(np.mean(p[y == 1] >= t))


@pytest.mark.parametrize("target", [0.9, 0.95, 0.98, 1.0])
def test_threshold_reaches_target_with_fewest_false_positives(target: float) -> None:
    rng = np.random.default_rng(7)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(np.int64)
    t = threshold_for_sensitivity(p, y, target)
    assert _sensitivity(p, y, t) >= target
    # The strictest threshold meeting the target is a positive's probability; t makes the same decisions
    # on these data, but lies strictly between that score and the next lower one.
    strictest = max(s for s in p[y == 1] if _sensitivity(p, y, s) >= target)
    assert ((p >= t) == (p >= strictest)).all()
    assert t <= strictest and (t == strictest or t > p[p < strictest].max())


def test_threshold_with_ties_and_float_rounding() -> None:
    # 50 positives: 0.98 * 50 is 49 up to float rounding, so exactly one positive may be missed.
    p = np.r_[np.linspace(0.5, 1.0, 50), np.full(10, 0.2)]
    y = np.r_[np.ones(50, int), np.zeros(10, int)]
    t = threshold_for_sensitivity(p, y, 0.98)
    assert p[0] < t <= p[1] and ((p >= t) == (p >= p[1])).all()
    tied = np.array([0.3, 0.3, 0.3, 0.9, 0.1])
    for target in (0.5, 1.0):
        t = threshold_for_sensitivity(tied, np.array([1, 1, 1, 1, 0]), target)
        assert 0.1 < t <= 0.3 and ((tied >= t) == (tied >= 0.3)).all()


def test_threshold_rejects_no_positives_and_bad_target() -> None:
    with pytest.raises(LungCNNInputError, match="no malignant"):
        threshold_for_sensitivity(np.array([0.1, 0.9]), np.array([0, 0]))
    with pytest.raises(LungCNNInputError):
        threshold_for_sensitivity(np.array([0.1, 0.9]), np.array([0, 1]), target=0.0)
    with pytest.raises(LungCNNInputError):
        threshold_for_sensitivity(np.array([0.1, 1.9]), np.array([0, 1]))  # not a probability


def test_temperature_fit_object_is_plain_data() -> None:
    fit = fit_temperature(*_binary_data(n=200))
    assert all(math.isfinite(v) for v in (fit.temperature, fit.nll_before, fit.nll_after))


# --- prior correction ------------------------------------------------------------------------------------

def test_prior_shift_undoes_balanced_training() -> None:
    from lungcnn.calibration.prior import prior_shift
    from lungcnn.evaluation import binary_metrics

    # Balanced training sees P(y=1) = 0.5; the data have 80% positives: the shift is log(0.8 / 0.2).
    assert prior_shift([20, 80], "sampler") == pytest.approx(np.log(4.0))
    assert prior_shift([20, 80], "loss") == pytest.approx(np.log(4.0))
    assert prior_shift([20, 80], "none") == 0.0
    k = prior_shift([10, 30, 60], "sampler")
    assert np.allclose(np.array(k) - k[0], np.log([1, 3, 6]))  # softmax only sees differences
    # A balanced-prior logit plus the shift gives the true posterior: Bayes with a changed prior.
    rng = np.random.default_rng(0)
    y = (rng.random(40000) < 0.8).astype(int)
    x = rng.normal(y * 1.0, 1.0)
    balanced_logit = x - 0.5  # exact log-likelihood ratio of the two unit-variance Gaussians
    shifted = balanced_logit + prior_shift([int((y == 0).sum()), int(y.sum())], "sampler")
    ece = binary_metrics(1 / (1 + np.exp(-shifted)), y)["ece"]
    assert ece < 0.02 and binary_metrics(1 / (1 + np.exp(-balanced_logit)), y)["ece"] > 0.1
    with pytest.raises(LungCNNInputError, match="positive image count"):
        prior_shift([0, 5], "sampler")
