"""Series-level learning, a small experiment: attention pooling (multiple-instance) over frozen slice features.

A series is malignant if some slice is, and IQ-OTH/NCCD labels every slice of a malignant case "malignant",
tumour or not. So instead of a slice classifier (logistic regression on each slice, series = mean of its top 3
slices) a gated-attention MIL head (Ilse et al., 2018) is trained on whole series (the dev set's groups.csv):
its attention weights say which slices made the series malignant. Both read the same frozen ImageNet
MobileNetV2 features (224 px, the TF weights of the training recipe, DICOM at level 50 / width 400 like
IQ-OTH/NCCD's look). Compared on (1) series ROC-AUC under grouped 5-fold CV of the dev set's benign and
malignant series (each series tested once per repeat) and (2) the annotated DICOM series: tumour vs tumour-free
slices ranked by each model's slice score (slice P for the probe; attention logit, and the MIL classifier on
the slice alone), slices without lungs in view (the lung check) ranked last. Features are not cached to disk
(another branch builds the cache).

    python scripts/mil_attention.py --root ../shared/data/iqothnccd-dev \
        --boxes ../shared/data/lung-pet-ct-dx-dev/boxes.csv [--repeats 2] [--out mil.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from lungcnn.data.io import LungWindow
from lungcnn.data.lungcrop import lungs_in_view
from lungcnn.data.transforms import build_transform, load_for_model
from lungcnn.fileio import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_features import backbone_for  # noqa: E402  (the sibling script's frozen backbone)

WINDOW = LungWindow(level=50, width=400)


def features(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features (N, 1280) and the lung check's verdict per image."""
    model, mean, std = backbone_for("tf")
    transform = build_transform(mean, std)
    out, lungs = [], []
    with torch.inference_mode():
        for i in range(0, len(paths), 32):
            images = [load_for_model(p, 224, WINDOW) for p in paths[i : i + 32]]
            lungs += [lungs_in_view(im) for im in images]
            out.append(model(torch.stack([transform(image=im)["image"] for im in images])).numpy())
    return np.concatenate(out), np.array(lungs)


class GatedAttention(nn.Module):
    """Slices (n, d) -> series logit, and one attention logit per slice (Ilse et al., 2018)."""

    def __init__(self, d: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.v, self.u, self.w = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, 1)
        self.drop, self.head = nn.Dropout(dropout), nn.Linear(d, 1)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.attention(h)
        z = (torch.softmax(a, 0)[:, None] * h).sum(0)
        return self.head(self.drop(z)).squeeze(-1), a


def fit_mil(bags: list[np.ndarray], y: np.ndarray, seed: int, epochs: int = 60) -> GatedAttention:
    torch.manual_seed(seed)
    model = GatedAttention(bags[0].shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-3)
    weight = torch.tensor((y == 0).sum() / max((y == 1).sum(), 1), dtype=torch.float32)  # class balance
    rng = np.random.default_rng(seed)
    tensors = [torch.from_numpy(b).float() for b in bags]
    for _ in range(epochs):
        model.train()
        for i in rng.permutation(len(bags)):
            logit, _ = model(tensors[i])
            loss = nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor(float(y[i])),
                                                                  pos_weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def probe() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))


def top3(p: np.ndarray) -> float:
    return float(np.sort(p)[-3:].mean())


def series_folds(names: np.ndarray, series_y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per series: each class's series shuffled (seeded) and dealt round-robin. Every series has one label,
    so this is a stratified grouped split; sklearn's StratifiedGroupKFold gave the same split for every seed here."""
    rng, fold = np.random.default_rng(seed), np.zeros(len(names), int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(series_y == label))
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def auc_ci(y: np.ndarray, s: np.ndarray, seed: int = 0, n: int = 2000) -> list[float]:
    """Stratified bootstrap 95% interval of the ROC-AUC."""
    from lungcnn.metrics.classification import _auroc_batched  # the report's own batched AUC (sklearn's costs 8 ms a call)

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rows = np.stack([np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))] for _ in range(n)])
    boot = _auroc_batched(np.asarray(s, float)[rows], np.asarray(y)[rows] == 1, len(pos), len(neg))
    return [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--boxes", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    table = pd.read_csv(args.root / "groups.csv")
    table = table[table["label"].str.lower().isin(["benign", "malignant"])].reset_index(drop=True)
    boxes = pd.read_csv(args.boxes).sort_values("instance_number").reset_index(drop=True)
    start = time.perf_counter()
    x, _ = features([args.root / f for f in table["file"]])
    xd, lungs = features([args.boxes.parent / f for f in boxes["file"]])
    print(f"features of {len(x) + len(xd)} images in {time.perf_counter() - start:.0f} s", flush=True)
    y = (table["label"].str.lower() == "malignant").to_numpy(int)
    groups = table["group"].astype(str).to_numpy()
    names = np.unique(groups)
    series_y = np.array([y[groups == g].max() for g in names])
    result: dict = {"n_slices": len(y), "n_series": len(names), "n_malignant_series": int(series_y.sum()), "cv": []}
    for r in range(args.repeats):
        p_probe, p_mil = np.zeros(len(names)), np.zeros(len(names))
        fold_of = dict(zip(names, series_folds(names, series_y, args.folds, r)))
        slice_fold = np.array([fold_of[g] for g in groups])
        for k in range(args.folds):
            train, test = np.flatnonzero(slice_fold != k), np.flatnonzero(slice_fold == k)
            clf = probe().fit(x[train], y[train])
            scaler = StandardScaler().fit(x[train])
            train_series = np.unique(groups[train])
            bags = [scaler.transform(x[groups == g]).astype(np.float32) for g in train_series]
            mil = fit_mil(bags, np.array([y[groups == g].max() for g in train_series]), seed=r)
            for g in np.unique(groups[test]):
                j = int(np.searchsorted(names, g))
                p_probe[j] = top3(clf.predict_proba(x[groups == g])[:, 1])
                with torch.no_grad():
                    p_mil[j] = float(mil(torch.from_numpy(scaler.transform(x[groups == g])).float())[0])
        result["cv"].append({"seed": r, "series_auc_probe_top3": roc_auc_score(series_y, p_probe),
                             "ci95_probe": auc_ci(series_y, p_probe, r), "series_auc_mil": roc_auc_score(series_y, p_mil),
                             "ci95_mil": auc_ci(series_y, p_mil, r)})
        print(result["cv"][-1], flush=True)
    # The annotated series, with models trained on every dev series.
    tumour = boxes["tumour"].to_numpy(int) == 1
    clf = probe().fit(x, y)
    scaler = StandardScaler().fit(x)
    mil = fit_mil([scaler.transform(x[groups == g]).astype(np.float32) for g in names], series_y, seed=0)
    h = torch.from_numpy(scaler.transform(xd)).float()
    with torch.no_grad():
        series_logit, attention = mil(h[lungs])
        alone = mil.head(h).squeeze(-1).numpy()
    scores = {"probe slice P": clf.predict_proba(xd)[:, 1], "MIL attention": np.full(len(xd), -np.inf),
              "MIL head per slice": alone}
    scores["MIL attention"][lungs] = attention.numpy()
    result["annotated"] = {"lungs_in_view": int(lungs.sum()), "mil_series_probability": float(torch.sigmoid(series_logit))}
    for name, s in scores.items():
        s = np.where(lungs, s, -np.inf)  # the lung step: slices without lungs ranked last
        finite = np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) - 1)
        order = np.argsort(-finite, kind="stable")
        result["annotated"][name] = {"auc": float(roc_auc_score(tumour, finite)), "ci95": auc_ci(tumour.astype(int), finite),
                                     "first_tumour_rank": int(np.flatnonzero(tumour[order])[0]) + 1}
        print(name, result["annotated"][name], flush=True)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
