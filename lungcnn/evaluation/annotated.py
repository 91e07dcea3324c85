"""Where the model looks: an annotated CT series (radiologists' tumour boxes per slice) against a checkpoint.

    lungcnn annotated --ckpt models/lungcnn-chestct-binary.ckpt \
        --boxes ../shared/data/lung-pet-ct-dx-dev/boxes.csv --out annotated.csv [--lung-check]
    lungcnn annotated --from-csv annotated.csv     # the figures again, from the table alone

`boxes.csv` (`file,instance_number,tumour,xmin,ymin,xmax,ymax`, files relative to its folder, boxes in the
slice's pixel coordinates) names every slice of the series. Per slice the table holds the calibrated P(target),
whether it was judged (the lung check, the domain guard), the Grad-CAM peak towards the target in slice pixels,
whether it lies in the box, and the share of Grad-CAM mass inside the lung fields. The figures come from the
table only (`figures`), so anyone can recompute them:

- `auc`: within-series ROC-AUC of tumour vs tumour-free slices by P(target), a slice not judged ranked below
  every judged one (it gets no probability), with a stratified bootstrap 95% interval over slices (adjacent
  slices are correlated: the interval is optimistic); `auc_every_slice`: the same by P(target) of every slice,
  judged or not;
- `peak_in_box`: share of tumour slices whose Grad-CAM peak lies inside the box (Clopper-Pearson 95%);
- `first_tumour_rank`: rank of the first tumour slice among the series' slices by suspicion (1 = shown first);
- `cam_lung_mass`: mean share of Grad-CAM mass inside the lung fields, over judged slices with a heat map;
- `novelty`: where the checkpoint has a normal bank (`spec.Novelty`, column `novelty`), the same `auc`, `auc_ci95`,
  `first_tumour_rank` and `most_suspicious` with the slices ranked by novelty, as the series view ranks them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open

COLUMNS = ["file", "instance_number", "tumour", "xmin", "ymin", "xmax", "ymax", "probability", "judged", "decision",
           "peak_x", "peak_y", "peak_in_box", "cam_lung_mass", "novelty"]


def model_to_slice(x: float, y: float, height: int, width: int, size: int) -> tuple[float, float]:
    """A point on the model's (size, size) grid -> slice pixels, undoing `transforms.to_model_grid` (centred square
    pad, resize) without a crop."""
    side = max(height, width)
    scale = side / size
    return (x + 0.5) * scale - 0.5 - (side - width) // 2, (y + 0.5) * scale - 0.5 - (side - height) // 2


def evaluate_series(ckpt: str | Path, boxes: str | Path, out: str | Path, lung_check: bool | None = None) -> dict[str, Any]:
    """Classify and explain every slice named in `boxes`, write the table to `out` atomically, return `figures`."""
    from lungcnn.data.io import read_image
    from lungcnn.data.lungcrop import find_lung_fields
    from lungcnn.inference.gradcam import gradcam, mass_inside
    from lungcnn.inference.predictor import Predictor

    boxes = Path(boxes)
    table = pd.read_csv(boxes).sort_values("instance_number").reset_index(drop=True)
    missing = sorted(set(COLUMNS[:7]) - set(table.columns))
    if missing:
        raise LungCNNInputError(f"{boxes}: not a boxes table (missing columns {missing})")
    predictor = Predictor.from_checkpoint(ckpt, lung_check=lung_check)
    if predictor.crop != "none":
        raise LungCNNInputError(f"{ckpt}: crops to the lungs; heat-map peaks are mapped back for uncropped models only")
    target, size = predictor.spec.series_target, predictor.image_size
    paths = [boxes.parent / f for f in table["file"]]
    predictions = predictor.predict_files(paths)
    rows = []
    for (_, box), path, p in zip(table.iterrows(), paths, predictions):
        if not p.ok:
            raise LungCNNInputError(f"{path}: {p.error}")
        image = predictor.load(path)
        height, width = read_image(path, window=predictor.window).shape
        cam = gradcam(predictor, image, towards=target)
        peak_y, peak_x = np.unravel_index(int(np.argmax(cam.heatmap)), cam.heatmap.shape)
        x, y = model_to_slice(peak_x, peak_y, height, width, size)
        tumour = int(box["tumour"]) == 1
        inside = tumour and box["xmin"] <= x <= box["xmax"] and box["ymin"] <= y <= box["ymax"]
        lungs = find_lung_fields(image).lungs
        rows.append({**{c: box[c] for c in COLUMNS[:7]}, "probability": p.probabilities[target], "judged": p.answered,
                     "decision": p.decision, "peak_x": round(float(x), 1), "peak_y": round(float(y), 1),
                     "peak_in_box": inside if tumour else "", "cam_lung_mass": "" if lungs is None or cam.empty
                     else round(mass_inside(cam.heatmap, lungs), 4), "novelty": "" if p.novelty != p.novelty else p.novelty})
    with atomic_open(out, "w", newline="", encoding="utf-8") as f:
        pd.DataFrame(rows, columns=COLUMNS).to_csv(f, index=False)
    return figures(out)


def figures(path: str | Path, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The evaluation's figures, from the table `evaluate_series` wrote (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    from lungcnn.metrics.bootstrap import clopper_pearson

    frame = pd.read_csv(path)
    tumour = frame["tumour"].to_numpy(int) == 1
    judged = frame["judged"].astype(str).str.lower().eq("true").to_numpy()
    if tumour.all() or not tumour.any():
        raise LungCNNInputError(f"{path}: needs tumour and tumour-free slices for a within-series AUC")
    hits = frame.loc[tumour, "peak_in_box"].astype(str).str.lower().eq("true")
    mass = pd.to_numeric(frame.loc[judged, "cam_lung_mass"], errors="coerce").dropna()
    novelty = pd.to_numeric(frame.get("novelty", pd.Series(np.nan, frame.index)), errors="coerce").to_numpy(float)
    by_novelty = judged.any() and bool(np.isfinite(novelty[judged]).all())
    return {
        "table": str(path), "slices": len(frame), "tumour_slices": int(tumour.sum()), "judged": int(judged.sum()),
        **_ranking(frame, tumour, judged, frame["probability"].to_numpy(float), n_resamples, seed),
        "auc_every_slice": float(roc_auc_score(tumour, frame["probability"].to_numpy(float))),
        "peak_in_box": float(hits.mean()), "peak_in_box_k": int(hits.sum()),
        "peak_in_box_ci95": list(clopper_pearson(int(hits.sum()), int(tumour.sum()))),
        "cam_lung_mass": float(mass.mean()) if len(mass) else math.nan, "cam_lung_mass_n": int(len(mass)),
        "novelty": _ranking(frame, tumour, judged, novelty, n_resamples, seed) if by_novelty else None,
    }


def _ranking(frame: pd.DataFrame, tumour: np.ndarray, judged: np.ndarray, values: np.ndarray, n_resamples: int,
             seed: int) -> dict[str, Any]:
    """AUC (bootstrap interval), first tumour slice's rank and the slice shown first, ranking judged slices by
    `values` and every slice not judged below them."""
    from sklearn.metrics import roc_auc_score

    score = np.where(judged, values, -np.inf)
    rank = np.argsort(-score, kind="stable")
    finite = np.where(np.isfinite(score), score, np.min(values[judged], initial=0.0) - 1.0)  # below every judged one
    pos, neg = np.flatnonzero(tumour), np.flatnonzero(~tumour)
    # AUC of a resample = its tumour x tumour-free pairs' mean win (ties 1/2): one matrix product over all resamples
    # instead of roc_auc_score each time (seconds per figure); the same draws, so the same interval.
    wins = (finite[pos, None] > finite[None, neg]) + 0.5 * (finite[pos, None] == finite[None, neg])
    rng = np.random.default_rng(seed)
    counts_pos, counts_neg = np.zeros((n_resamples, len(pos))), np.zeros((n_resamples, len(neg)))
    for r in range(n_resamples):
        counts_pos[r] = np.bincount(rng.choice(len(pos), len(pos)), minlength=len(pos))
        counts_neg[r] = np.bincount(rng.choice(len(neg), len(neg)), minlength=len(neg))
    boot = ((counts_pos @ wins) * counts_neg).sum(axis=1) / (len(pos) * len(neg))
    return {"auc": float(roc_auc_score(tumour, finite)),
            "auc_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "first_tumour_rank": int(np.flatnonzero(tumour[rank])[0]) + 1, "most_suspicious": str(frame["file"].iloc[rank[0]])}
