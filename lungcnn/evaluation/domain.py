"""The domain guard in an evaluation: how many test images it flagged, and the figures with and without them.

Metrics on all rows are what the model does when every answer is read; on in-domain rows, what it does
when flagged images get no answer (the page's behaviour). Both are reported, each saying which it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungcnn.metrics.bootstrap import clopper_pearson
from lungcnn.spec import ModelSpec


def domain_report(spec: ModelSpec, probs: np.ndarray, labels: np.ndarray,
                  in_domain: np.ndarray) -> dict[str, Any] | None:
    """Share flagged (95% Clopper-Pearson interval; `n` >= 1 readable images) and accuracy / balanced accuracy
    on all rows and on in-domain rows under the spec's decision rule; None when the checkpoint has no guard."""
    if spec.guard is None:
        return None
    in_domain = np.asarray(in_domain, bool)
    n, flagged = len(in_domain), int((~in_domain).sum())
    decided = spec.decide(probs)
    rows = {"all rows": np.ones(n, bool), "in-domain rows": in_domain}
    return {"flagged": flagged, "n": n, "share_flagged": flagged / n,
            "share_flagged_ci95": list(clopper_pearson(flagged, n)), "threshold": spec.guard.threshold,
            "metrics": {name: _accuracies(decided[mask], labels[mask]) for name, mask in rows.items()}}


def _accuracies(decided: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if len(labels) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None}  # null in report.json, not NaN
    recalls = [float(np.mean(decided[labels == k] == k)) for k in np.unique(labels)]
    return {"n": int(len(labels)), "accuracy": float(np.mean(decided == labels)), "balanced_accuracy": float(np.mean(recalls))}


def domain_summary(section: dict[str, Any] | None) -> str:
    """Lines for the evaluation's printed summary."""
    if section is None:
        return "domain guard: none (every image answered)"
    lo, hi = section["share_flagged_ci95"]
    text = (f"domain guard: {section['flagged']} of {section['n']} images flagged out of domain "
            f"({section['share_flagged']:.1%}, 95% CI {lo:.1%}-{hi:.1%})")
    for name, m in section["metrics"].items():
        figures = "n/a" if not m["n"] else f"accuracy {m['accuracy']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}"
        text += f"\n  {name} (n={m['n']}): {figures}"
    return text
