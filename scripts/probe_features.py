"""Cheap, honest comparison of preprocessing choices for the hard pair (benign vs normal).

For each variant (image size, lung cropping, horizontal-flip test-time augmentation, backbone
weights) it extracts frozen ImageNet backbone features for every image once, then fits a logistic
regression under grouped k-fold cross-validation (no series in two folds) and reports, on the pooled
out-of-fold predictions, 3-class balanced accuracy and benign-vs-normal ROC-AUC with 95% bootstrap
intervals. A linear probe is not the fine-tuned model, but it ranks input choices at a fraction of
the cost of fine-tuning each one (2 CPU cores here).

    .venv/bin/python scripts/probe_features.py --root ../shared/data/iqothnccd-dev --out probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungcnn.data.audit import CLASS_FOLDERS
from lungcnn.data.catalog import scan_folder
from lungcnn.data.io import LungWindow
from lungcnn.data.transforms import build_transform, load_for_model
from lungcnn.evaluation.multiclass_report import pairwise_auc
from lungcnn.metrics.bootstrap import bootstrap_ci
from lungcnn.models.backbone import create_backbone, normalization_for

CLASSES = ["normal", "benign", "malignant"]
TF_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenetv2_100_imagenet_tf.safetensors"

VARIANTS = {
    "224 px": dict(size=224),
    "224 px + lung crop": dict(size=224, crop="lungs"),
    "320 px": dict(size=320),
    "320 px + lung crop": dict(size=320, crop="lungs"),
    "320 px + lung crop + flip TTA": dict(size=320, crop="lungs", tta=True),
    "224 px, TF-Keras weights": dict(size=224, weights="tf"),
}


def backbone_for(weights: str) -> tuple[torch.nn.Module, list[float], list[float]]:
    if weights == "tf":
        model = timm.create_model("mobilenetv2_100", pretrained=True, num_classes=0, pad_type="same",
                                  pretrained_cfg_overlay=dict(file=str(TF_WEIGHTS), mean=(0.5,) * 3, std=(0.5,) * 3))
        return model.eval(), [0.5] * 3, [0.5] * 3
    mean, std = normalization_for("mobilenetv2_100")
    return create_backbone("mobilenetv2_100", "imagenet").eval(), mean, std


@torch.inference_mode()
def features(paths: list[str], size: int, crop: str = "none", tta: bool = False, weights: str = "torchvision") -> np.ndarray:
    model, mean, std = backbone_for(weights)
    transform = build_transform(mean, std)
    out = []
    for i in range(0, len(paths), 32):
        images = [load_for_model(p, size, LungWindow(), crop=crop) for p in paths[i : i + 32]]
        x = torch.stack([transform(image=im)["image"] for im in images])
        f = model(x)
        if tta:
            f = (f + model(torch.flip(x, dims=[3]))) / 2
        out.append(f.numpy())
    return np.concatenate(out)


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Pooled out-of-fold class probabilities from a grouped k-fold logistic regression."""
    probs = np.zeros((len(y), len(CLASSES)))
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
        clf.fit(x[train], y[train])
        probs[test] = clf.predict_proba(x[test])
    return probs


def scores(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = probs.argmax(1)
    balanced = float(np.mean([(pred[y == k] == k).mean() for k in range(len(CLASSES))]))
    return {"balanced_accuracy": balanced, "auc_benign_vs_normal": pairwise_auc(probs, y, 0, 1),
            "auc_malignant_vs_benign": pairwise_auc(probs, y, 1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--out", default="probe.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    frame = scan_folder(args.root, CLASS_FOLDERS, CLASSES, normal_as="class")
    paths = [str(Path(args.root) / f) for f in frame["file"]]
    y, groups = frame["label"].to_numpy(), frame["group"].to_numpy()
    results = {}
    for name in args.variants:
        start = time.time()
        x = features(paths, **VARIANTS[name])
        probs = probe(x, y, groups, args.folds, args.seed)
        point = scores(probs, y)
        ci = bootstrap_ci(scores, probs, y, n_resamples=1000, seed=args.seed)
        results[name] = {k: {"value": v, "ci95": ci[k]} for k, v in point.items()}
        cells = "  ".join(f"{k} {v:.3f} ({ci[k][0]:.3f}-{ci[k][1]:.3f})" for k, v in point.items())
        print(f"{name:<34} {cells}  [{time.time() - start:.0f} s]", flush=True)
    Path(args.out).write_text(json.dumps({"n": len(y), "folds": args.folds, "seed": args.seed, "results": results}, indent=2))


if __name__ == "__main__":
    main()
