"""Scores of predictions against labels, and their bootstrap intervals (numpy/torch only: no model, no files).

Below calibration and evaluation, which both score predictions: `classification` (binary and K-class
metrics, ECE, input checks), `bootstrap` (stratified and grouped resampling, percentile intervals).
"""

from lungcnn.metrics.bootstrap import bootstrap_ci, group_resample_indices
from lungcnn.metrics.classification import binary_metrics, multiclass_metrics

__all__ = ["binary_metrics", "bootstrap_ci", "group_resample_indices", "multiclass_metrics"]
