"""Look at the lesion, an experiment: a tile classifier taught by synthetic masses drawn into normal lung fields.

No shared source says where its tumours are (IQ-OTH/NCCD labels whole cases; chestct-kaggle's carcinoma slices have no
box), so tile models trained on slice labels learn whatever separates the slices. Here every normal slice of the
three training sources (luna16-normal every 2nd slice, chestct-kaggle normal, IQ-OTH/NCCD normal), rendered into the
model window (50/400, as conf/experiment/multisource.yaml reads each source) on a 512 px grid, is cut into 128 px
lung-field tiles (`lungcrop.lung_tiles`, as scripts/lesion_tiles.py); then `--masses` synthetic masses
(`lungcnn.data.synthetic.masses.insert_mass`, one at a time) are drawn into it. Tiles of the unchanged slice are
negatives; a tile holding at least half of a mass is a positive (one touching less of it is left out). A logistic
regression on the frozen TF-weights MobileNetV2 features of the tiles (128 px, as lesion_tiles.py) scores tiles;
a slice's score is its highest tile's. No cancer image is used for training.

Evaluated, never trained on:
- the annotated series (lung-pet-ct-dx-dev/A0001): tumour vs tumour-free slices' ROC-AUC (slices without lungs in
  view or without a tile ranked last, and among the slices with both), the first tumour slice's rank, and on how
  many tumour slices the top tile overlaps the box or holds its centre, with the chance of a random lung tile;
  and the same with each tumour removed (the part of its box, grown 1.5x, inside the lung fields' hulls set to aerated
  lung: `lesion_counterfactual.remove_box`);
- IQ-OTH/NCCD's benign and malignant series (case labels): series ROC-AUC by the series' highest slice score and by
  the mean of its top 3, and slice ROC-AUC;
- chestct-kaggle carcinoma vs normal slices with a model trained without chestct-kaggle's normal slices.

    python scripts/synthetic_masses.py --shared ../shared/data --out synthetic_masses.json --seeds 0 1 2 \
        [--masses 3] [--cache /tmp/masses]

The seed draws the masses; the classifier has no randomness. With several seeds, their classifiers' tile scores
averaged (the "ensemble") are evaluated too. Features are cached under --cache (per seed for the
training tiles; the evaluation sets as scripts/lesion_tiles.py caches them).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from lungcnn.data.lungcrop import find_lung_fields, lung_tiles
from lungcnn.data.rendering import parse_window, render
from lungcnn.data.synthetic.masses import insert_mass
from lungcnn.data.transforms import build_transform, to_model_grid
from lungcnn.fileio import atomic_open, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesion_counterfactual import remove_box  # noqa: E402
from lesion_tiles import GRID, MIN_INSIDE, STRIDE, TILE, WINDOW, cached, slice_ranking, top_tile  # noqa: E402
from mil_attention import auc_ci  # noqa: E402
from probe_features import backbone_for  # noqa: E402

# (folder, class folder, window, every n-th slice): the normal slices that carry the masses.
NORMALS = [("luna16-normal-dev", "normal", "lung", 2), ("chestct-kaggle-dev", "normal", "as_is", 1),
           ("iqothnccd-dev", "Normal cases", "iqothnccd", 1)]
KAGGLE = ("adenocarcinoma", "large.cell.carcinoma", "squamous.cell.carcinoma", "normal")
GROW = 1.5  # the tumour box, grown 1.5x around its centre so that no rim of the tumour is left, becomes aerated lung
C = 0.01  # fixed before any figure was seen; 0.1 ranked alike in the first (scratch) runs


def normal_slices(shared: Path) -> list[tuple[Path, str, str]]:
    return [(p, window, folder) for folder, cls, window, every in NORMALS
            for p in sorted((shared / folder / cls).glob("*"))[::every]]


@functools.cache
def backbone():
    model, mean, std = backbone_for("tf")
    return model, build_transform(mean, std)


@torch.inference_mode()
def tile_features(tiles: list[np.ndarray]) -> np.ndarray:
    model, transform = backbone()
    out = [model(torch.stack([transform(image=t)["image"] for t in tiles[i : i + 64]])).numpy()
           for i in range(0, len(tiles), 64)]
    return np.concatenate(out).astype(np.float32)


def training_tiles(shared: Path, masses: int, seed: int, cache: Path) -> dict[str, np.ndarray]:
    """Tile features, labels (1 mass, 0 none) and source folder of every normal slice and its masses."""
    file = cache / f"masses-seed{seed}-k{masses}-g{GRID}-t{TILE}-s{STRIDE}.npz"
    if file.is_file():
        with np.load(file) as z:
            return {k: z[k] for k in z.files}
    rng, start = np.random.default_rng(seed), time.perf_counter()
    tiles, labels, sources = [], [], []
    for path, window, folder in normal_slices(shared):
        grid = to_model_grid(render(path, parse_window(folder, window), WINDOW), GRID)
        fields = find_lung_fields(grid)
        if not fields.found:
            continue
        places = lung_tiles(grid, TILE, STRIDE, MIN_INSIDE)
        tiles += [grid[y : y + TILE, x : x + TILE] for y, x in places]
        labels += [0] * len(places)
        sources += [folder] * len(places)
        for _ in range(masses):
            drawn = insert_mass(grid, rng, fields=fields)
            if drawn is None:
                continue
            image, mass = drawn
            for y, x in places:
                share = mass.mask[y : y + TILE, x : x + TILE].sum() / mass.mask.sum()
                if share >= 0.5:  # tiles touching less of the mass are neither positive nor negative
                    tiles.append(image[y : y + TILE, x : x + TILE])
                    labels.append(1)
                    sources.append(folder)
    data = {"f": tile_features(tiles), "y": np.array(labels), "source": np.array(sources)}
    with atomic_open(file, "wb") as f:
        np.savez(f, **data)
    print(f"seed {seed}: {len(tiles)} tiles, {int(np.sum(labels))} with a mass, {time.perf_counter() - start:.0f} s", flush=True)
    return data


def classifier(train: dict[str, np.ndarray], keep: np.ndarray):
    scaler = StandardScaler().fit(train["f"][keep])
    model = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
    model.fit(scaler.transform(train["f"][keep]), train["y"][keep])
    return lambda x: model.decision_function(scaler.transform(np.asarray(x, np.float32)))


def slice_scores(data: dict[str, np.ndarray], score) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each slice's highest tile score (NaN without a tile) and its tiles' scores."""
    s = score(data["tiles"]) if len(data["tiles"]) else np.zeros(0)
    per = [s[data["owner"] == i] for i in range(len(data["whole"]))]
    return np.array([t.max() if len(t) else np.nan for t in per]), per


def annotated(shared: Path, cache: Path, score) -> dict:
    boxes = pd.read_csv(shared / "lung-pet-ct-dx-dev" / "boxes.csv").sort_values("instance_number").reset_index(drop=True)
    test = cached("lung-pet-ct-dx", [shared / "lung-pet-ct-dx-dev" / f for f in boxes["file"]], "hu", cache)
    tumour = boxes["tumour"].to_numpy(int) == 1
    common = test["lungs"] & np.isin(np.arange(len(boxes)), test["owner"])
    p, per = slice_scores(test, score)
    # The counterfactual of scripts/lesion_counterfactual.py: a ranking driven by the tumour falls without it.
    removed = p.copy()
    for i in np.flatnonzero(tumour):
        image = render(shared / "lung-pet-ct-dx-dev" / boxes.loc[i, "file"], parse_window("lung-pet-ct-dx", "hu"), WINDOW)
        if image.shape != (GRID, GRID):
            raise SystemExit(f"{boxes.loc[i, 'file']}: {image.shape}, not the {GRID} px grid the boxes are drawn on")
        clean = remove_box(to_model_grid(image, GRID), tuple(boxes.loc[i, ["xmin", "ymin", "xmax", "ymax"]].astype(float)), GROW)
        tiles = [clean[y : y + TILE, x : x + TILE] for y, x in lung_tiles(clean, TILE, STRIDE, MIN_INSIDE)]
        removed[i] = score(tile_features(tiles)).max() if tiles else np.nan
    without = slice_ranking(removed, test["lungs"], tumour, common)
    return {**slice_ranking(p, test["lungs"], tumour, common), **top_tile(per, test, boxes, tumour),
            "slice_score": [None if np.isnan(v) else round(float(v), 3) for v in p],
            "tumours_removed": {"grow": GROW, **{k: without[k] for k in ("auc", "auc_ci95", "auc_common", "first_tumour_rank")},
                                "mean_change_on_tumour_slices": float(np.nanmean(removed[tumour] - p[tumour]))}}


def iqothnccd(shared: Path, cache: Path, score) -> dict:
    root = shared / "iqothnccd-dev"
    groups = pd.read_csv(root / "groups.csv").set_index("file")["group"]
    paths = sorted(p for d in ("Bengin cases", "Malignant cases") for p in (root / d).glob("*"))
    data = cached("iqothnccd-benign-malignant", paths, "iqothnccd", cache)
    p, _ = slice_scores(data, score)
    frame = pd.DataFrame({"group": [groups[f"{q.parent.name}/{q.name}"] for q in paths], "p": p,
                          "y": [int(q.parent.name.startswith("Malignant")) for q in paths]}).dropna()
    series = frame.groupby("group").agg(y=("y", "max"), top1=("p", "max"), top3=("p", lambda s: np.sort(s)[-3:].mean()))
    y = series["y"].to_numpy()
    return {"slices_scored": f"{len(frame)}/{len(paths)}", "series": len(series),
            "slice_auc": float(roc_auc_score(frame["y"], frame["p"])),
            **{f"series_auc_{k}": float(roc_auc_score(y, series[k])) for k in ("top1", "top3")},
            **{f"series_auc_{k}_ci95": auc_ci(y, series[k].to_numpy()) for k in ("top1", "top3")}}


def kaggle(shared: Path, cache: Path, score) -> dict:
    paths = sorted(p for d in KAGGLE for p in (shared / "chestct-kaggle-dev" / d).glob("*"))
    data = cached("chestct-kaggle-all", paths, "as_is", cache)
    p, _ = slice_scores(data, score)
    y = np.array([int(q.parent.name != "normal") for q in paths])
    ok = np.isfinite(p)
    return {"slices_scored": f"{int(ok.sum())}/{len(p)}", "auc": float(roc_auc_score(y[ok], p[ok])),
            "auc_ci95": auc_ci(y[ok], p[ok])}


def mean_of(scores):
    return lambda x: np.mean([score(x) for score in scores], axis=0)


def evaluate(args: argparse.Namespace, every, no_kaggle, name: str) -> dict:
    out = {"annotated": annotated(args.shared, args.cache, every), "iqothnccd": iqothnccd(args.shared, args.cache, every),
           "chestct_kaggle_without_its_normals": kaggle(args.shared, args.cache, no_kaggle)}
    a, q, k = out["annotated"], out["iqothnccd"], out["chestct_kaggle_without_its_normals"]
    print(f"{name}: annotated AUC {a['auc']:.3f} {np.round(a['auc_ci95'], 3)} (common {a['auc_common']:.3f}), "
          f"first tumour {a['first_tumour_rank']}, top tile in box {a['top_tile_overlaps_box']} "
          f"(centre {a['top_tile_holds_box_centre']}, chance {a['chance_overlap']:.2f}), tumours removed: AUC "
          f"{a['tumours_removed']['auc']:.3f}, first tumour {a['tumours_removed']['first_tumour_rank']}; IQ-OTH/NCCD series "
          f"AUC top1 {q['series_auc_top1']:.3f} top3 {q['series_auc_top3']:.3f}, slice {q['slice_auc']:.3f}; "
          f"chestct-kaggle {k['auc']:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--masses", type=int, default=3, help="masses drawn, one at a time, into each normal slice")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/masses"))
    args = parser.parse_args(argv)
    results, every, no_kaggle = [], [], []
    for seed in args.seeds:
        train = training_tiles(args.shared, args.masses, seed, args.cache)
        every.append(classifier(train, np.ones(len(train["y"]), bool)))
        no_kaggle.append(classifier(train, train["source"] != "chestct-kaggle-dev"))
        results.append({"seed": seed, "masses": args.masses, "tiles": len(train["y"]), "positives": int(train["y"].sum()),
                        **evaluate(args, every[-1], no_kaggle[-1], f"seed {seed}")})
    if len(args.seeds) > 1:  # the seeds' classifiers together: their tile scores averaged
        results.append({"seed": "ensemble", "masses": args.masses, "seeds": args.seeds,
                        **evaluate(args, mean_of(every), mean_of(no_kaggle), "ensemble")})
    write_json(args.out, {"c": C, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
