"""Leave one source out with a frozen-feature probe: which rendering lets a model carry across CT sources?

For each rendering (every source as it is, or each 8-bit source with a known export window re-windowed into
one model window), every image of the sources in conf/experiment/multisource.yaml is read the way the data
module reads it (`lungcnn.data.rendering.render`, padded and resized to 224 px), passed once through the frozen
ImageNet MobileNetV2 (torchvision's weights, pooled 1280 features; no fine-tuning), and a logistic regression
(standardised, C = 0.05, class-balanced) is trained on all sources but one and tested on the one left out. The
per-source table (`lungcnn.evaluation.by_source.per_source_table`: ROC-AUC where the source has both classes,
sensitivity / specificity at P >= 0.5, share called malignant) carries 95% series-bootstrap intervals. A shortcut
check asks how well the source itself is predicted, from the same features and from the image border alone
(grouped 5-fold CV, balanced accuracy; chance = 1 / number of sources).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sources_probe.py --cache /tmp/sources_probe --out /tmp/sources_probe.json

`--features blocks` probes the last block's pooled features instead of the ImageNet network's own (`model.features`);
`--renderings NAME ...` runs some renderings only.

Features are cached per (source, rendering) in --cache (never in the repository: they are derived from the data).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungcnn.data.io import LungWindow
from lungcnn.data.rendering import render
from lungcnn.data.sources import parse_sources, scan_sources
from lungcnn.data.transforms import CROPS, build_transform, to_model_grid
from lungcnn.evaluation.by_source import markdown, per_source_table
from lungcnn.models.backbone import create_backbone, normalization_for
from lungcnn.spec import FEATURES

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
BORDER = 12  # px of the 224 px grid: the frame a scanner's annotations, padding and field of view leave
# name -> (model window or None, each source's window override (unnamed sources keep the config's), crop).
RENDERINGS = {
    "as is (no re-windowing)": (None, {"iqothnccd": "as_is", "luna16-normal": "as_is"}, "none"),
    "lung window -600/1500": ((-600, 1500), {}, "none"),
    "soft-tissue window 50/400": ((50, 400), {}, "none"),
    "wide window -300/1200": ((-300, 1200), {}, "none"),
    "soft-tissue window 50/400, lung crop": ((50, 400), {}, "lungs"),
}


def sources_for(windows: dict[str, str]) -> list:
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "experiment" / "multisource.yaml"))["data"]["sources"]
    for s in cfg:
        s["root"] = str((ROOT / s["root"]).resolve())
        s["window"] = windows.get(s["name"], s["window"])
    return parse_sources(cfg)


@torch.inference_mode()
def features(images: np.ndarray, model: torch.nn.Module, transform) -> np.ndarray:
    out = []
    for i in range(0, len(images), 64):
        out.append(model(torch.stack([transform(image=im)["image"] for im in images[i:i + 64]])).numpy())
    return np.concatenate(out)


def border_features(images: np.ndarray) -> np.ndarray:
    """The image border alone: a 16-bin histogram of the outer frame and the mean of each of its four strips."""
    b = BORDER
    strips = [images[:, :b, :], images[:, -b:, :], images[:, :, :b], images[:, :, -b:]]
    frame = np.concatenate([s.reshape(len(images), -1) for s in strips], axis=1)
    hist = np.stack([np.histogram(f, bins=16, range=(0, 256))[0] / f.size for f in frame])
    return np.concatenate([hist, np.stack([s.reshape(len(images), -1).mean(1) / 255 for s in strips], 1)], axis=1)


def probe():
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced"))


def source_shortcut(x: np.ndarray, source: np.ndarray, groups: np.ndarray, seed: int) -> dict:
    """Grouped k-fold CV balanced accuracy of predicting the source from `x`; k = 5, or fewer so that every fold
    has every source (LUNA16's two patients: k = 2)."""
    scores = []
    k = min(5, min(len(np.unique(groups[source == s])) for s in np.unique(source)))
    for train, test in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(x, source, groups):
        scores.append(balanced_accuracy_score(source[test], probe().fit(x[train], source[train]).predict(x[test])))
    return {"balanced_accuracy": float(np.mean(scores)), "per_fold": [round(float(s), 3) for s in scores],
            "chance": 1 / len(np.unique(source))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder (outside the repository)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--n-resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", choices=FEATURES, default="head", help="model.features of the frozen backbone")
    p.add_argument("--renderings", nargs="+", choices=list(RENDERINGS), default=list(RENDERINGS))
    args = p.parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    names = ["not_malignant", "malignant"]
    frame = scan_sources(sources_for({}), names, "negative")
    model = create_backbone("mobilenetv2_100", "imagenet", features=args.features).eval()
    transform = build_transform(*normalization_for("mobilenetv2_100"))
    result = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
              "seed": args.seed, "features": args.features, "n_resamples": args.n_resamples, "image_size": SIZE,
              "counts": {k: {str(c): int(n) for c, n in v.items()} for k, v in
                         frame.groupby("source")["class_name"].value_counts().unstack(fill_value=0).T.to_dict().items()},
              "groups": frame.groupby("source")["group"].nunique().to_dict(), "renderings": {}}
    for rendering in args.renderings:
        model_window, overrides, crop = RENDERINGS[rendering]
        window = LungWindow(*model_window) if model_window else LungWindow()
        feats, borders = [], []
        for source in sources_for(overrides):
            # An 8-bit image taken as it is does not depend on the model window: its features are computed once.
            depends = source.rendering.kind != "as_is"
            key = f"{source.name}__{source.rendering.describe()}__{model_window if depends else ''}".replace(" ", "")
            key += "" if crop == "none" else f"__{crop}"
            key += "" if args.features == "head" else f"__{args.features}"
            path = cache / (key.replace("/", "_").replace("'", "").replace(":", "=") + ".npz")
            part = frame[frame["source"] == source.name]
            if not path.is_file():
                images = np.stack([to_model_grid(CROPS[crop](render(source.root / f.split("/", 1)[1], source.rendering,
                                                                     window)), SIZE) for f in part["file"]])
                np.savez(path, features=features(images, model, transform), border=border_features(images))
            saved = np.load(path)
            feats.append(saved["features"])
            borders.append(saved["border"])
            print(f"{rendering}: {source.name} {len(part)} images ({time.perf_counter() - start:.0f} s)", flush=True)
        x, border = np.concatenate(feats), np.concatenate(borders)
        rows = []
        for held_out in frame["source"].unique():
            test = (frame["source"] == held_out).to_numpy()
            clf = probe().fit(x[~test], frame["label"].to_numpy()[~test])
            prob = clf.predict_proba(x[test])[:, 1]
            rows.append(frame[test][["source", "group", "label"]].assign(probability=prob, called=(prob >= 0.5).astype(int),
                                                                      judged=1))  # a probe answers every slice
        table = per_source_table(pd.concat(rows, ignore_index=True), args.n_resamples, args.seed)
        source, groups = frame["source"].to_numpy(), frame["group"].to_numpy()
        result["renderings"][rendering] = {
            "model_window": model_window, "crop": crop, "per_source": table, "markdown": markdown(table),
            "source_from_features": source_shortcut(x, source, groups, args.seed),
            "source_from_border": source_shortcut(border, source, groups, args.seed)}
        print(f"\n## {rendering}\n{markdown(table)}\nsource from features: "
              f"{result['renderings'][rendering]['source_from_features']['balanced_accuracy']:.3f}, from the border: "
              f"{result['renderings'][rendering]['source_from_border']['balanced_accuracy']:.3f}\n", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
