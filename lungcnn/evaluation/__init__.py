"""Evaluation of trained models: the test report, plots, repeated grouped cross-validation, paired comparisons,
series-level scoring, cross-fitted calibration, and `evaluate()` of a checkpoint on a split or folder.

Scores and intervals come from `lungcnn.metrics`; predictions from `lungcnn.inference`.
"""

from lungcnn.evaluation.plots import plot_confusion, plot_histogram, plot_reliability, plot_roc
from lungcnn.evaluation.report import PAPER, build_report
from lungcnn.metrics import binary_metrics, bootstrap_ci, multiclass_metrics

__all__ = [
    "PAPER",
    "binary_metrics",
    "bootstrap_ci",
    "build_report",
    "multiclass_metrics",
    "plot_confusion",
    "plot_histogram",
    "plot_reliability",
    "plot_roc",
]
