"""Where the model looks, on any evaluation: the share of each Grad-CAM heat map's mass inside the lung fields.

A lesion a lung-nodule classifier can judge lies in the lung fields; a heat map on the spine, the mediastinum or
the liver says the decision came from somewhere else (docs/lesion.md). `lungcnn evaluate` reports the mean share
over up to `limit` judged images (evenly spaced over the evaluated rows, so every class and source is in it),
towards each image's decided class (the heat map the page shows), with a 95% percentile bootstrap interval over
images, beside the lung fields' mean share of the image: what a heat map spread evenly would give. Grad-CAM costs a
backward pass (about 0.3 s per 224 px image on one CPU core), hence the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_LIMIT = 64


def cam_lung_mass(predictor: Any, images: np.ndarray, predictions: Sequence[Any], limit: int = DEFAULT_LIMIT,
                  n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`images`: (n, S, S) uint8 of the readable predictions, in order (`Labelled.images`); `predictions`: one per
    listed row (`Predictor.classify_labelled`). Images not judged, or whose lung fields are not found, are skipped.

    Returns {"images": k, "mean": m, "ci95": [lo, hi], "limit": limit, "towards": ...}; mean and interval are NaN
    where no image qualifies (limit 0, nothing judged)."""
    from lungcnn.data.lungcrop import find_lung_fields
    from lungcnn.inference.gradcam import gradcam, mass_inside

    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if predictor.net is None:  # logits from onnxruntime only: no network to take gradients of
        limit = 0
    readable = [p for p in predictions if p.ok]
    if len(readable) != len(images):
        raise ValueError(f"{len(images)} images for {len(readable)} readable predictions")
    judged = [i for i, p in enumerate(readable) if p.answered]
    picked = [judged[int(k)] for k in np.unique(np.linspace(0, len(judged) - 1, min(limit, len(judged))).round())]
    shares, areas = [], []
    for i in picked:
        lungs = find_lung_fields(images[i]).lungs
        if lungs is None:
            continue
        # towards the decision already made: gradcam would otherwise classify the image again to learn it
        cam = gradcam(predictor, images[i], towards=readable[i].decision)
        if not cam.empty:
            shares.append(mass_inside(cam.heatmap, lungs))
            areas.append(float(lungs.mean()))
    shares = np.asarray(shares, np.float64)
    out = {"images": len(shares), "limit": limit, "towards": "each image's decided class",
           "mean": math.nan, "ci95": [math.nan, math.nan], "lung_area": math.nan}
    if len(shares):
        boot = np.random.default_rng(seed).choice(shares, (n_resamples, len(shares))).mean(1)
        out.update(mean=float(shares.mean()), ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                   lung_area=float(np.mean(areas)))
    return out


def summary(result: dict[str, Any]) -> str:
    """One line for the console and report.md."""
    if not result["images"]:
        return "Grad-CAM mass inside the lung fields: not measured (no judged image with lung fields, or limit 0)"
    lo, hi = result["ci95"]
    return (f"Grad-CAM mass inside the lung fields: {result['mean']:.3f} (95% CI {lo:.3f}-{hi:.3f}) over "
            f"{result['images']} judged images, towards {result['towards']}; the lung fields cover "
            f"{result['lung_area']:.3f} of these images (an evenly spread heat map's share)")
