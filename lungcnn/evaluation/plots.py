"""Evaluation figures written as PNG.

Figures are built with the object-oriented API on a bare `Figure` (rendered by Agg) instead of pyplot, so
plotting never touches the global backend or leaks open figures in a long-running app; each file is
written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lungcnn.fileio import atomic_open
from lungcnn.metrics.classification import N_BINS, bin_indices, binary_metrics, check_binary

DEFAULT_CLASS_NAMES = ("benign", "malignant")


def plot_roc(probs: Any, labels: Any, path: str | os.PathLike, thresholds: Sequence[float] = ()) -> None:
    """ROC curve with its AUC; `thresholds` are marked as operating points (decision prob >= t)."""
    p, y = check_binary(probs, labels)
    fig, ax = _figure(5.0, 5.0)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if np.unique(y).size < 2:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center")
    else:
        fpr, tpr = _roc_curve(p, y)
        auc = binary_metrics(p, y)["roc_auc"]
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUC = {auc:.3f})")
        for i, t in enumerate(thresholds):
            d = p >= t
            ax.plot(np.mean(d[y == 0]), np.mean(d[y == 1]), "o", color=f"C{i + 1}",
                    label=f"threshold {t:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title="ROC curve")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_reliability(probs_before: Any, probs_after: Any, labels: Any, path: str | os.PathLike,
                     n_bins: int = N_BINS) -> None:
    """Reliability diagram before/after calibration (top) and per-bin counts (bottom), same bins as ECE."""
    pb, y = check_binary(probs_before, labels)
    pa, _ = check_binary(probs_after, labels)
    fig, (ax, axc) = _figure(6.0, 7.0, rows=2, height_ratios=(3, 1))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    centres = (np.arange(n_bins) + 0.5) / n_bins
    width = 0.4 / n_bins
    for i, (name, p) in enumerate((("before", pb), ("after", pa))):
        count, conf, frac = _reliability_bins(p, y, n_bins)
        ece = binary_metrics(p, y)["ece"] if n_bins == N_BINS else None
        label = f"{name} calibration" + (f" (ECE = {ece:.3f})" if ece is not None else "")
        nz = count > 0
        ax.plot(conf[nz], frac[nz], "o-", color=f"C{i}", label=label)
        axc.bar(centres + (i - 0.5) * width, count, width=width, color=f"C{i}", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fraction malignant", title="Reliability diagram")
    ax.legend(loc="upper left")
    axc.set(xlim=(0, 1), xlabel="predicted probability of malignant", ylabel="images per bin")
    axc.legend(loc="upper center")
    _save(fig, path)


def plot_confusion(cm: Any, class_names: Sequence[str], path: str | os.PathLike,
                   title: str = "Confusion matrix") -> None:
    """Confusion matrix (rows = true, columns = predicted) with the counts written in the cells."""
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix of shape {m.shape} does not match {len(class_names)} class names"
        )
    k = m.shape[0]
    fig, ax = _figure(1.6 * k + 2.4, 1.6 * k + 1.6)
    im = ax.imshow(m, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, shrink=0.8)
    high = m.max() / 2 if m.size else 0
    for i in range(k):
        for j in range(k):
            colour = "white" if m[i, j] > high else "black"
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", color=colour)
    ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true", title=title)
    _save(fig, path)


def plot_histogram(
    probs: Any,
    labels: Any,
    path: str | os.PathLike,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    thresholds: Sequence[float] = (),
) -> None:
    """Distribution of the predicted probability of malignant, split by true class, with threshold lines."""
    p, y = check_binary(probs, labels)
    if len(class_names) != 2:
        raise ValueError(f"the histogram is binary: need 2 class names, got {len(class_names)}")
    fig, ax = _figure(6.0, 4.0)
    edges = np.linspace(0, 1, 26)
    for cls, name in enumerate(class_names):
        n_cls = int(np.sum(y == cls))
        ax.hist(p[y == cls], bins=edges, alpha=0.6, color=f"C{cls}", label=f"true {name} (n={n_cls})")
    for i, t in enumerate(thresholds):
        ax.axvline(t, color=f"C{i + 2}", ls="--", label=f"threshold {t:.3f}")
    ax.set(xlim=(0, 1), xlabel="predicted probability of malignant", ylabel="images",
           title="Predicted probabilities by true class")
    ax.legend(loc="upper center")
    _save(fig, path)


def _reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Same bins as the ECE; the exactly-1.0 slot is folded into the top bin for display.
    idx = np.minimum(bin_indices(p, n_bins), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins) / count
    return count, conf, frac


def _roc_curve(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # One point per distinct score (ties move diagonally), from (0, 0) to (1, 1).
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ps.size - 1]
    tps = np.cumsum(ys)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / max(fps[-1], 1)], np.r_[0.0, tps / max(tps[-1], 1)]


def _figure(width: float, height: float, rows: int = 1, height_ratios: Sequence[float] | None = None) -> Any:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if rows == 1:
        return fig, fig.add_subplot()
    axes = fig.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": height_ratios})
    return (fig, tuple(axes))


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
