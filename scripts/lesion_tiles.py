"""Look at the lesion, an experiment: lung-field tiles at full resolution with multiple-instance learning (MIL)
against a whole-slice probe, on IQ-OTH/NCCD's series and on the annotated DICOM series.

Whole-slice features describe anatomy and the source; a tumour covers a few percent of a slice. So each slice is
rendered into the model window (50/400, every source in its own rendering as conf/experiment/multisource.yaml reads
it), put on a 512 px grid, and cut into 128 px tiles over its lung fields (`lungcrop.lung_tiles`: stride 64, at
least half of each tile inside the lungs' convex hulls). Frozen ImageNet MobileNetV2 features (the TF weights of
scripts/probe_features.py) of every tile, fed at its native 128 px, and of the whole slice at 224 px are cached
under --cache. A slice is malignant if some tile is: its logit is the max of a linear tile score (max-MIL) or a
gated-attention pooling of its tiles (Ilse et al., 2018), trained with slice labels.

Training sets (never lung-pet-ct-dx, the evaluation): `all` = IQ-OTH/NCCD (malignant vs benign + normal) +
chestct-kaggle (carcinoma vs normal) + luna16-normal (every 4th slice); `iqoth` = IQ-OTH/NCCD alone; `tumour` =
chestct-kaggle + luna16-normal, the sources whose positive slices show a tumour (IQ-OTH/NCCD labels every slice of
a malignant case). Compared on
(a) grouped 5-fold CV of IQ-OTH/NCCD's benign and malignant series (normal series always train; `tumour` has no
    IQ-OTH/NCCD slice to hold out, so it is trained once and tested on every series): series ROC-AUC (series = mean
    of its top 3 slice probabilities) and slice ROC-AUC;
(b) the annotated series, models trained on the whole training set: within-series ROC-AUC of tumour vs tumour-free
    slices (slices without lungs in view, by the product's lung check, or without tiles ranked last), the first
    tumour slice's rank, and the share of tumour slices whose top tile (highest tile score or attention) overlaps
    the tumour box, with its chance level (the share of a tumour slice's tiles that overlap the box).

    python scripts/lesion_tiles.py --shared ../shared/data --out lesion_tiles.json [--seeds 0 1] [--cache /tmp/tiles] \
        [--parts annotated cv]

The annotated part also reports the AUC among the slices every model scores (lungs in view and a tile): a tile
model leaves the lung apices untiled, and ranking them last must not count as finding the tumour.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from lungcnn.data.io import LungWindow
from lungcnn.data.lungcrop import lung_tiles, lungs_in_view
from lungcnn.data.rendering import parse_window, render
from lungcnn.data.sources import Source, scan_sources
from lungcnn.data.transforms import build_transform, to_model_grid
from lungcnn.fileio import atomic_open, write_json
from lungcnn.metrics.bootstrap import bootstrap_ci, clopper_pearson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mil_attention import auc_ci, probe, series_folds, top3  # noqa: E402  (the sibling experiment's split and metrics)
from probe_features import backbone_for  # noqa: E402  (the frozen TF-weights backbone)

WINDOW = LungWindow(level=50, width=400)
GRID, TILE, STRIDE, MIN_INSIDE, WHOLE = 512, 128, 64, 0.5, 224
TILE_RULE = "best"  # lung_tiles keeps the best tile where none is MIN_INSIDE in the lungs (the cache's name says so)
PCA_DIM = 256  # tile features are standardised and reduced before MIL (speed on 2 shared cores)
CLASSES = ["not_malignant", "malignant"]
# (name, folder, class folders, window) as conf/experiment/multisource.yaml; chestct-kaggle is never split here,
# so its near-duplicate grouping is not needed.
SOURCES = [
    ("iqothnccd", "iqothnccd-dev", {"Bengin cases": "not_malignant", "Malignant cases": "malignant",
                                    "Normal cases": "normal"}, "iqothnccd", "groups.csv"),
    ("chestct-kaggle", "chestct-kaggle-dev", {"adenocarcinoma": "malignant", "large.cell.carcinoma": "malignant",
                                              "squamous.cell.carcinoma": "malignant", "normal": "normal"}, "as_is", "none"),
    ("luna16-normal", "luna16-normal-dev", {"normal": "normal"}, "lung", "groups.csv"),
]
RECIPES = {"all": ("iqothnccd", "chestct-kaggle", "luna16-normal"), "iqoth": ("iqothnccd",),
           "tumour": ("chestct-kaggle", "luna16-normal")}


# -- features ------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def extract(paths: list[Path], window: str) -> dict[str, np.ndarray]:
    """Whole-slice and tile features of each slice, the tiles' slice and (x, y) on the grid, the lung check, shape."""
    model, mean, std = backbone_for("tf")
    transform = build_transform(mean, std)
    rendering = parse_window("window", window)
    out: dict[str, list] = {"whole": [], "tiles": [], "owner": [], "xy": [], "lungs": [], "shape": []}
    pending: dict[str, list] = {"whole": [], "tiles": []}

    def flush(kind: str, force: bool = False) -> None:
        if pending[kind] and (force or len(pending[kind]) >= 64):
            x = torch.stack([transform(image=im)["image"] for im in pending[kind]])
            out[kind].append(model(x).numpy().astype(np.float16))
            pending[kind].clear()

    for i, path in enumerate(paths):
        image = render(path, rendering, WINDOW)
        small, grid = to_model_grid(image, WHOLE), to_model_grid(image, GRID)
        out["lungs"].append(lungs_in_view(small))  # the product's check, on the model's own pixels
        out["shape"].append(image.shape)
        pending["whole"].append(small)
        for y, x in lung_tiles(grid, TILE, STRIDE, MIN_INSIDE):
            pending["tiles"].append(grid[y : y + TILE, x : x + TILE])
            out["owner"].append(i)
            out["xy"].append((x, y))
        flush("whole")
        flush("tiles")
    flush("whole", True)
    flush("tiles", True)
    empty = np.zeros((0, 1280), np.float16)
    return {"whole": np.concatenate(out["whole"]), "tiles": np.concatenate(out["tiles"] or [empty]),
            "owner": np.array(out["owner"], int), "xy": np.array(out["xy"], int).reshape(-1, 2),
            "lungs": np.array(out["lungs"], bool), "shape": np.array(out["shape"], int)}


def cached(name: str, paths: list[Path], window: str, cache: Path) -> dict[str, np.ndarray]:
    """`extract`, from `cache` when the same files were extracted with the same settings."""
    file = cache / f"{name}-g{GRID}-t{TILE}-s{STRIDE}-m{int(MIN_INSIDE * 100)}-{TILE_RULE}.npz"
    names = np.array([str(p) for p in paths])
    if file.is_file():
        with np.load(file) as z:
            if np.array_equal(z["paths"], names):
                return {k: z[k] for k in z.files if k != "paths"}
    start = time.perf_counter()
    data = extract(paths, window)
    with atomic_open(file, "wb") as f:
        np.savez(f, paths=names, **data)
    print(f"{name}: {len(paths)} slices, {len(data['tiles'])} tiles in {time.perf_counter() - start:.0f} s", flush=True)
    return data


def dataset(shared: Path, cache: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every training slice (one row each: source, file, label, class_name, group) and its features, stacked."""
    sources = [Source(name, shared / folder, folders, parse_window(name, window), groups)
               for name, folder, folders, window, groups in SOURCES]
    frame = scan_sources(sources, CLASSES, normal_as="negative")
    luna = frame.index[frame["source"] == "luna16-normal"]
    frame = frame.drop(luna[np.arange(len(luna)) % 4 != 0]).reset_index(drop=True)  # whole scans: every 4th slice
    parts = []
    for name, folder, _, window, _ in SOURCES:
        rows = frame[frame["source"] == name]
        paths = [shared / folder / f.split("/", 1)[1] for f in rows["file"]]
        parts.append(cached(name, paths, window, cache))
    return frame, stack(parts)


def stack(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    offsets = np.cumsum([0] + [len(p["whole"]) for p in parts])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["owner"] = np.concatenate([p["owner"] + o for p, o in zip(parts, offsets)])
    return out


# -- models --------------------------------------------------------------------------------------------------------
class TileMIL(nn.Module):
    """Bags of tiles (B, T, d) with a mask -> slice logit (B,) and a score per tile (B, T) that says where it looks.

    `max`: a linear tile score, the slice logit its max over tiles. `attention`: gated attention (Ilse et al.,
    2018) pools the tiles, a linear head classifies the pooled feature; the tile score is the attention logit."""

    def __init__(self, d: int, pooling: str, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        self.score = nn.Linear(d, 1)
        if pooling == "attention":
            self.v, self.u, self.w = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(h)
        if self.pooling == "max":
            tile = self.score(h).squeeze(-1).masked_fill(~mask, -1e4)
            return tile.max(1).values, tile
        a = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1).masked_fill(~mask, -1e4)
        z = (torch.softmax(a, 1)[..., None] * h).sum(1)
        return self.score(z).squeeze(-1), a


def bags(x: np.ndarray, owner: np.ndarray, slices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile features of `slices` (each must have a tile) padded to (B, T, d), and the mask of real tiles."""
    members = [np.flatnonzero(owner == s) for s in slices]
    t = max(len(m) for m in members)
    h, mask = np.zeros((len(slices), t, x.shape[1]), np.float32), np.zeros((len(slices), t), bool)
    for i, m in enumerate(members):
        h[i, : len(m)], mask[i, : len(m)] = x[m], True
    return torch.from_numpy(h), torch.from_numpy(mask)


def fit_mil(h: torch.Tensor, mask: torch.Tensor, y: np.ndarray, pooling: str, seed: int, epochs: int = 30) -> TileMIL:
    torch.manual_seed(seed)
    model = TileMIL(h.shape[-1], pooling)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    target = torch.from_numpy(y.astype(np.float32))
    pos_weight = torch.tensor((y == 0).sum() / max((y == 1).sum(), 1), dtype=torch.float32)  # class balance
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // 64)):
            logit, _ = model(h[batch], mask[batch])
            loss = nn.functional.binary_cross_entropy_with_logits(logit, target[batch], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Models:
    """The three models trained on one set of slices: `scores(slices)` -> {model: (slice P, tile scores or None)}."""

    def __init__(self, data: dict[str, np.ndarray], train: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.data = data
        self.probe = probe().fit(data["whole"][train].astype(np.float32), y[train])
        has_tiles = np.isin(train, data["owner"])
        self.scaler = make_pipeline(StandardScaler(), PCA(PCA_DIM, random_state=seed)).fit(
            data["tiles"][np.isin(data["owner"], train)].astype(np.float32))
        h, mask = bags(self.tiles(), data["owner"], train[has_tiles])
        self.mil = {p: fit_mil(h, mask, y[train[has_tiles]], p, seed) for p in ("max", "attention")}

    def tiles(self) -> np.ndarray:
        return self.scaler.transform(self.data["tiles"].astype(np.float32)).astype(np.float32)

    def scores(self, slices: np.ndarray) -> dict[str, tuple[np.ndarray, list[np.ndarray] | None]]:
        """Slice probabilities (NaN for a slice without tiles) and, for the MIL models, each slice's tile scores."""
        out = {"whole-slice probe": (self.probe.predict_proba(self.data["whole"][slices].astype(np.float32))[:, 1], None)}
        with_tiles = slices[np.isin(slices, self.data["owner"])]
        h, mask = bags(self.tiles(), self.data["owner"], with_tiles)
        for pooling, model in self.mil.items():
            p, tiles = np.full(len(slices), np.nan), [np.zeros(0)] * len(slices)
            with torch.no_grad():
                logit, tile = model(h, mask)
            where = {s: i for i, s in enumerate(slices)}
            for j, s in enumerate(with_tiles):
                p[where[s]] = float(torch.sigmoid(logit[j]))
                tiles[where[s]] = tile[j][mask[j]].numpy()
            out[f"tile MIL, {pooling}"] = (p, tiles)
        return out


# -- (a) IQ-OTH/NCCD grouped CV --------------------------------------------------------------------------------------
def series_cv(frame: pd.DataFrame, data: dict[str, np.ndarray], seeds: list[int], folds: int) -> list[dict]:
    y = frame["label"].to_numpy(int)
    iq = (frame["source"] == "iqothnccd").to_numpy()
    # normal_as=negative names normal slices "not_malignant" too: the folder tells benign from normal.
    evaluated = iq & (frame["file"].str.split("/").str[1] != "Normal cases").to_numpy()
    groups = frame["group"].astype(str).to_numpy()
    names = np.unique(groups[evaluated])
    series_y = np.array([y[groups == g].max() for g in names])
    results = []
    for seed in seeds:
        fold_of = dict(zip(names, series_folds(names, series_y, folds, seed)))
        fold = np.array([fold_of.get(g, -1) for g in groups])  # -1: normal series and other sources, always train
        tiled = np.isin(np.arange(len(frame)), data["owner"])
        for recipe, sources in RECIPES.items():
            in_recipe = frame["source"].isin(sources).to_numpy()
            slice_p: dict[str, np.ndarray] = {}
            for k in range(folds) if "iqothnccd" in sources else [None]:
                train = np.flatnonzero(in_recipe & (fold != k))
                test = np.flatnonzero(evaluated & (fold == k)) if k is not None else np.flatnonzero(evaluated)
                for model, (p, _) in Models(data, train, y, seed).scores(test).items():
                    slice_p.setdefault(model, np.full(len(frame), np.nan))[test] = p
            for model, p in slice_p.items():
                figures = series_figures(p, y, groups, names, series_y, evaluated, tiled, seed)
                results.append({"seed": seed, "recipe": recipe, "model": model, **figures})
                print({k: v for k, v in results[-1].items()}, flush=True)
    return results


def series_figures(p: np.ndarray, y: np.ndarray, groups: np.ndarray, names: np.ndarray, series_y: np.ndarray,
                   evaluated: np.ndarray, tiled: np.ndarray, seed: int) -> dict:
    """Series AUC (top-3 mean of the slices with a probability) over the series this model scores and over those
    with a tiled slice (which every model scores), slice AUC with a series-resampled interval."""
    scored = evaluated & np.isfinite(p)
    series = np.array([top3(p[scored & (groups == g)]) if (scored & (groups == g)).any() else np.nan for g in names])
    common = np.array([(evaluated & tiled & (groups == g)).any() for g in names])
    auc = lambda q, t: {"auc": roc_auc_score(t, q)}  # noqa: E731
    ok = np.isfinite(series)
    return {"series_auc": float(roc_auc_score(series_y[ok], series[ok])), "series_ci95": auc_ci(series_y[ok], series[ok], seed),
            "series_auc_common": float(roc_auc_score(series_y[common], series[common])),
            "series_common": int(common.sum()),
            "slice_auc": float(roc_auc_score(y[scored], p[scored])),
            "slice_auc_common": float(roc_auc_score(y[scored & tiled], p[scored & tiled])),
            "slice_ci95_by_series": list(bootstrap_ci(auc, p[scored], y[scored], 1000, seed, groups=groups[scored])["auc"]),
            "slices_without_score": int((evaluated & ~np.isfinite(p)).sum()),
            "series_without_score": int(sum(not (scored & (groups == g)).any() for g in names))}


# -- (b) the annotated series ----------------------------------------------------------------------------------------
def annotated(frame: pd.DataFrame, data: dict[str, np.ndarray], boxes_csv: Path, cache: Path, seeds: list[int]) -> list[dict]:
    boxes = pd.read_csv(boxes_csv).sort_values("instance_number").reset_index(drop=True)
    test = cached("lung-pet-ct-dx", [boxes_csv.parent / f for f in boxes["file"]], "hu", cache)
    both = stack([data, test])
    slices = np.arange(len(data["whole"]), len(both["whole"]))
    tumour = boxes["tumour"].to_numpy(int) == 1
    y = frame["label"].to_numpy(int)
    # Slices every model scores: lungs in view and at least one tile (apex slices have lungs too small for a tile).
    common = test["lungs"] & np.isin(np.arange(len(slices)), test["owner"])
    results = []
    for recipe, sources in RECIPES.items():
        train = np.flatnonzero(frame["source"].isin(sources).to_numpy())
        for seed in seeds:
            for model, (p, tiles) in Models(both, train, np.r_[y, np.zeros(len(slices), int)], seed).scores(slices).items():
                results.append({"recipe": recipe, "seed": seed, "model": model,
                                **slice_ranking(p, test["lungs"], tumour, common),
                                **({} if tiles is None else top_tile(tiles, test, boxes, tumour)),
                                "slice_p": [None if np.isnan(v) else round(float(v), 4) for v in p]})
                print(results[-1], flush=True)
    return results


def slice_ranking(p: np.ndarray, lungs: np.ndarray, tumour: np.ndarray, common: np.ndarray) -> dict:
    """AUC and first tumour rank, a slice without lungs in view or without a score ranked below every other; and the
    AUC among the `common` slices (those every model scores), so that no model gains by leaving slices out."""
    judged = lungs & np.isfinite(p)
    s = np.where(judged, p, -1.0)
    order = np.argsort(-s, kind="stable")
    return {"judged": int(judged.sum()), "auc": float(roc_auc_score(tumour, s)), "auc_ci95": auc_ci(tumour.astype(int), s),
            "auc_common": float(roc_auc_score(tumour[common], p[common])),
            "auc_common_ci95": auc_ci(tumour[common].astype(int), p[common]),
            "first_tumour_rank": int(np.flatnonzero(tumour[order])[0]) + 1, "top5_tumour": int(tumour[order[:5]].sum())}


def top_tile(tiles: list[np.ndarray], test: dict[str, np.ndarray], boxes: pd.DataFrame, tumour: np.ndarray) -> dict:
    """Share of tumour slices whose top tile overlaps the box (and holds its centre), and the chance of a random tile."""
    overlap, centre, chance, top_xy = [], [], [], []
    for i in np.flatnonzero(tumour):
        if not len(tiles[i]):
            top_xy.append(None)
            overlap.append(False)
            centre.append(False)
            chance.append(0.0)
            continue
        h, w = test["shape"][i]
        side = max(h, w)
        scale = side / GRID
        xy = test["xy"][test["owner"] == i] * scale - np.array([(side - w) // 2, (side - h) // 2])
        b = boxes.loc[i, ["xmin", "ymin", "xmax", "ymax"]].to_numpy(float)
        t = TILE * scale
        hits = (xy[:, 0] < b[2]) & (xy[:, 0] + t > b[0]) & (xy[:, 1] < b[3]) & (xy[:, 1] + t > b[1])
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        holds = (xy[:, 0] <= cx) & (cx < xy[:, 0] + t) & (xy[:, 1] <= cy) & (cy < xy[:, 1] + t)
        top = int(np.argmax(tiles[i]))
        top_xy.append([int(v) for v in xy[top]])
        overlap.append(bool(hits[top]))
        centre.append(bool(holds[top]))
        chance.append(float(hits.mean()))
    k, n = int(sum(overlap)), len(overlap)
    return {"top_tile_overlaps_box": f"{k}/{n}", "top_tile_overlap_ci95": list(clopper_pearson(k, n)),
            "top_tile_holds_box_centre": f"{int(sum(centre))}/{n}", "chance_overlap": float(np.mean(chance)),
            "top_tile_xy": top_xy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tiles"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=["annotated", "cv"], default=["annotated", "cv"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    frame, data = dataset(args.shared, args.cache)
    print(f"{len(frame)} training slices, {len(data['tiles'])} tiles "
          f"({np.isin(np.arange(len(frame)), data['owner']).mean():.1%} of slices have tiles)", flush=True)
    result = {"settings": {"grid": GRID, "tile": TILE, "stride": STRIDE, "min_inside": MIN_INSIDE, "seeds": args.seeds,
                           "folds": args.folds, "n_slices": {s: int((frame["source"] == s).sum()) for s in RECIPES["all"]},
                           "n_tiles": len(data["tiles"])}}
    if "annotated" in args.parts:
        result["annotated"] = annotated(frame, data, args.shared / "lung-pet-ct-dx-dev" / "boxes.csv", args.cache, args.seeds)
    if "cv" in args.parts:
        result["cv"] = series_cv(frame, data, args.seeds, args.folds)
    result["seconds"] = round(time.perf_counter() - start)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
