"""Rank a series' slices by how unlike normal chest CT they are, instead of by the head's probability (an experiment).

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

Score: the pooled backbone features (what the head reads), standardised with the checkpoint's own training-split
statistics (`model.standardize`; else the bank's), L2-normalised; the cosine distance to the k-th nearest normal
slice of the checkpoint's training split (folders mapped to `normal` in its sources' `class_folders`).

Writes `--out` as a copy of the `lungcnn annotated` table with `probability` replaced by the novelty score (judged
slices as there), and prints `lungcnn.evaluation.annotated.figures` of both tables: the within-series ROC-AUC of
tumour vs tumour-free slices and the rank of the first tumour slice. With `--val`, also the novelty's ROC-AUC
(malignant vs not) on the checkpoint's validation split per source (unseen patients; labels used only to score).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def normal_rows(files: pd.Series, data: Mapping[str, Any]) -> np.ndarray:
    """Which split rows (`file` as the split file names it) come from a folder mapped to `normal`.

    Several sources: `<source>/<folder>/...` against each source's `class_folders`; one root: `<folder>/...`."""
    parts = files.str.split("/")
    if data.get("sources"):
        folders = {(s["name"], f) for s in data["sources"] for f, c in s["class_folders"].items() if c == "normal"}
        return np.array([len(p) > 2 and (p[0], p[1]) in folders for p in parts], dtype=bool)
    folders = {f for f, c in (data.get("class_folders") or {}).items() if c == "normal"}
    return np.array([len(p) > 1 and p[0] in folders for p in parts], dtype=bool)


def novelty(bank: np.ndarray, queries: np.ndarray, mean: np.ndarray, scale: np.ndarray, k: int = 1) -> np.ndarray:
    """(Q,) cosine distance of each standardised query to its k-th nearest standardised bank row (mean of the k)."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}], got {k}")

    def unit(x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - mean) / scale
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    distance = 1.0 - unit(queries) @ unit(bank).T
    return np.sort(distance, axis=1)[:, :k].mean(axis=1)


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import roc_auc_score

    from lungcnn.data.labelled import labelled_images
    from lungcnn.evaluation.annotated import figures
    from lungcnn.fileio import atomic_open
    from lungcnn.inference.predictor import Predictor
    from lungcnn.models.checkpoint import build_network, load_checkpoint
    from lungcnn.models.guard import pooled_features

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
    predictor = Predictor(spec.replace(guard=None), net)

    train = labelled_images(spec.data, spec.preprocessing, spec.class_names, "train")
    normal = normal_rows(train.frame["file"][train.readable], spec.data)
    if not normal.any():
        sys.exit(f"{args.ckpt}: its training split has no slice from a folder mapped to `normal`: no normal bank")
    with torch.no_grad():
        bank = predictor.backbone_features(train, args.feature_cache)[normal]
    standardize = net.head.standardize
    mean, scale = ((standardize.mean.numpy(), standardize.scale.numpy()) if standardize is not None
                   else (bank.mean(axis=0), bank.std(axis=0) + 1e-6))

    table = pd.read_csv(args.table)
    images = np.stack([predictor.load(args.boxes.parent / f) for f in table["file"]])
    with torch.no_grad():
        series = pooled_features(net, (predictor.normalise(images[i : i + 32]) for i in range(0, len(images), 32))).numpy()
    scored = table.assign(probability=novelty(bank, series, mean, scale, args.k))
    with atomic_open(args.out, "w", newline="", encoding="utf-8") as f:
        scored.to_csv(f, index=False)
    keys = ("slices", "judged", "tumour_slices", "auc", "auc_ci95", "first_tumour_rank", "most_suspicious")
    head, ranked = figures(args.table), figures(args.out)
    result = {"bank": f"{int(normal.sum())} normal training slices", "k": args.k,
              "head": {k: head[k] for k in keys}, "novelty": {k: ranked[k] for k in keys}}
    if args.val:
        val = labelled_images(spec.data, spec.preprocessing, spec.class_names, "val")
        with torch.no_grad():
            scores = novelty(bank, predictor.backbone_features(val, args.feature_cache), mean, scale, args.k)
        frame = val.frame[val.readable].assign(score=scores)
        result["val_auc"] = {source: float(roc_auc_score(part["label"] == 1, part["score"]))
                             for source, part in frame.groupby("source") if part["label"].nunique() == 2}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
