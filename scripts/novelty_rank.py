"""Rank a series' slices by how unlike normal chest CT they are, for any checkpoint (with or without a normal bank).

    lungcnn annotated --ckpt models/lungcnn-chestct-binary.ckpt --boxes ../shared/data/lung-pet-ct-dx-dev/boxes.csv \
        --out annotated.csv --lung-check
    python scripts/novelty_rank.py --ckpt models/lungcnn-chestct-binary.ckpt \
        --boxes ../shared/data/lung-pet-ct-dx-dev/boxes.csv --table annotated.csv --out novelty.csv [--val] \
        [--feature-cache .cache/lungcnn/features]

Why: trained on whole slices, the head ranks a cancer patient's slices by anatomy and source, not by the tumour
(issue "Look at the lesion"). Novelty asks another question: how far is this slice from every normal slice the
model was trained on? A tumour-free slice of a patient resembles normal slices at its level of the chest; a slice
with a tumour does not. Within one series every slice shares the scanner and export, so the ranking compares like
with like even on a source the model never saw (the absolute score does not: a new source is far from everything).

Score: what `lungcnn calibrate` fits into new checkpoints (`lungcnn.calibration.novelty.fit_novelty`), fitted here
again with `--k` so that older checkpoints (and the leave-one-source-out models) can be ranked alike: the distance of
the standardised, L2-normalised pooled features to the k-th nearest normal slice of the checkpoint's training split.
A checkpoint with a bank also reports it in `lungcnn annotated` directly.

Writes `--out` as a copy of the `lungcnn annotated` table with `probability` replaced by the novelty score (judged
slices as there), and prints `lungcnn.evaluation.annotated.figures` of both tables: the within-series ROC-AUC of
tumour vs tumour-free slices and the rank of the first tumour slice. With `--val`, also the novelty's ROC-AUC
(malignant vs not) on the checkpoint's validation split per source (unseen patients; labels used only to score).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    from lungcnn.calibration.guard import training_features
    from lungcnn.calibration.novelty import fit_novelty
    from lungcnn.data.labelled import labelled_images
    from lungcnn.evaluation.annotated import figures
    from lungcnn.fileio import atomic_open
    from lungcnn.inference.predictor import Predictor
    from lungcnn.models.checkpoint import build_network, load_checkpoint
    from lungcnn.models.guard import KnnDistance, pooled_features, split_state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--boxes", required=True, type=Path, help="the series' boxes.csv (its files are relative to it)")
    parser.add_argument("--table", required=True, type=Path, help="the table `lungcnn annotated --out` wrote for --ckpt")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--val", action="store_true", help="also score the checkpoint's validation split per source")
    parser.add_argument("--feature-cache", default=None, help="training's feature cache folder (feature_cache.dir), if any")
    args = parser.parse_args(argv)

    spec, state = load_checkpoint(args.ckpt)
    net = build_network(spec, state).eval()
    predictor = Predictor(spec.replace(guard=None, novelty=None), net)
    fitted = fit_novelty(predictor, *training_features(predictor, args.feature_cache), args.k)
    if fitted is None:
        sys.exit(f"{args.ckpt}: its training split has fewer than k={args.k} slices from folders mapped to `normal`")
    module = KnnDistance.from_state(split_state(fitted[1])[2], args.k)

    def novelty(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(features)).double().numpy()

    table = pd.read_csv(args.table)
    images = np.stack([predictor.load(args.boxes.parent / f) for f in table["file"]])
    series = pooled_features(net, (predictor.normalise(images[i : i + 32]) for i in range(0, len(images), 32))).numpy()
    scored = table.assign(probability=novelty(series))
    with atomic_open(args.out, "w", newline="", encoding="utf-8") as f:
        scored.to_csv(f, index=False)
    keys = ("slices", "judged", "tumour_slices", "auc", "auc_ci95", "first_tumour_rank", "most_suspicious")
    head, ranked = figures(args.table), figures(args.out)
    result = {"bank": fitted[0].fitted_on, "k": args.k,
              "head": {k: head[k] for k in keys}, "novelty": {k: ranked[k] for k in keys}}
    if args.val:
        val = labelled_images(spec.data, spec.preprocessing, spec.class_names, "val")
        scores = novelty(predictor.backbone_features(val, args.feature_cache))
        frame = val.frame[val.readable].assign(score=scores)
        result["val_auc"] = {source: float(roc_auc_score(part["label"] == 1, part["score"]))
                             for source, part in frame.groupby("source") if part["label"].nunique() == 2}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
