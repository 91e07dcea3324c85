"""Evaluation: metrics, bootstrap intervals, plots and the test report (numpy/torch only, no model code)."""

from lungcnn.evaluation.bootstrap import bootstrap_ci
from lungcnn.evaluation.metrics import binary_metrics, multiclass_metrics
from lungcnn.evaluation.plots import plot_confusion, plot_histogram, plot_reliability, plot_roc
from lungcnn.evaluation.report import PAPER, build_report

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
