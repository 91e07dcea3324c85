"""Which head recipe on the frozen backbone? Variants compared on the yardstick's own repeated grouped folds.

Every variant trains through lungcnn's own path (the Hydra config of `experiment=iqothnccd` plus the variant's
overrides, `build_model`, the fine-tuning callback, a Lightning Trainer) on cached features
(`lungcnn.features`), on the same R seeds x K grouped folds `python -m lungcnn.cv run` draws (`assign_splits`
with data.n_folds / data.fold / seed). A fit runs to the largest epoch count asked for and records, at every
epoch, the head's validation AUC and its test-fold probabilities; the learning-rate schedule and the sampler's
draws do not depend on trainer.max_epochs, so epoch E of that fit is a run with max_epochs=E, and each
checkpoint rule is read from the same fit: `last@E` (the last epoch), `best@E` (the epoch of the highest
validation AUC, as the default ModelCheckpoint keeps it), `stop@E` (early stopping, patience 3 on validation AUC).

Figures per repeat, pooled over its K folds (every image tested once): slice ROC-AUC and series ROC-AUC (the
project's series rule: mean of the 3 most suspicious slices, `lungcnn.evaluation.series_level`), uncalibrated
(AUC does not change under calibration); paired differences from the first variant with a 95% bootstrap
interval over series (the same resamples for both). ECE and the operating point need the calibrated folds:
`python -m lungcnn.cv run` measures those for the chosen recipe.

    python scripts/recipe_search.py --root ../shared/data/iqothnccd-dev --out recipe_search.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from lungcnn.data.splits import assign_splits
from lungcnn.evaluation.bootstrap import bootstrap_ci
from lungcnn.evaluation.series_level import series_scores
from lungcnn.features.data import FeatureDataModule, feature_datamodule
from lungcnn.fileio import write_json
from lungcnn.spec import SeriesRule
from lungcnn.train import build_datamodule, build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
SERIES = SeriesRule("topk_mean", 3)

# name -> Hydra overrides on top of experiment=iqothnccd (the first is the baseline of the paired differences).
VARIANTS = {
    "mlp": [],
    "mlp noaug": ["feature_cache.views=0"],
    "mlp wd1e-2": ["model.weight_decay=1e-2"],
    "mlp drop0.5": ["model.dropout=0.5"],
    "mlp views4": ["feature_cache.views=4"],
    "linear": ["model.hidden=0"],
    "linear noaug": ["model.hidden=0", "feature_cache.views=0"],
    "linear wd1e-2": ["model.hidden=0", "model.weight_decay=1e-2"],
    "linear drop0.5": ["model.hidden=0", "model.dropout=0.5"],
}


class Recorder(L.Callback):
    """At every validation: the validation AUC and the test-fold probabilities of the head as it is now."""

    def __init__(self, val: torch.Tensor, val_labels: np.ndarray, test: torch.Tensor) -> None:
        self.val, self.val_labels, self.test = val, val_labels, test
        self.val_auc: list[float] = []
        self.test_p: list[np.ndarray] = []

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        p = [torch.sigmoid(pl_module(x)).numpy() for x in (self.val, self.test)]
        self.val_auc.append(float(roc_auc_score(self.val_labels, p[0])))
        self.test_p.append(p[1])


def checkpoint_epoch(val_auc: list[float], rule: str, epochs: int) -> int:
    """The epoch index (0-based) a checkpoint rule keeps from the first `epochs` epochs."""
    auc = np.asarray(val_auc[:epochs])
    if rule == "last":
        return epochs - 1
    if rule == "best":
        return int(np.argmax(auc))  # the first maximum: ModelCheckpoint replaces only on improvement
    best, since = 0, 0
    for e in range(1, len(auc)):  # early stopping, patience 3
        if auc[e] > auc[best]:
            best, since = e, 0
        else:
            since += 1
            if since >= 3:
                break
    return best


def fit_fold(cfg, base, features: np.ndarray, seed: int, fold: int, folds: int) -> tuple[np.ndarray, Recorder]:
    """Train one fold on cached features through lungcnn's model, callbacks and trainer; return its test mask."""
    images = copy.copy(base)
    frame = base.frame.drop(columns="split")
    frame["split"] = assign_splits(frame, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                                   seed=seed, grouped=True, n_folds=folds, fold=fold)
    images.frame, images.seed = frame, seed
    data = FeatureDataModule(images, features)
    L.seed_everything(seed, workers=True)
    model = build_model(cfg, images)
    masks = {s: (frame["split"] == s).to_numpy() for s in ("val", "test")}
    recorder = Recorder(data.features[torch.from_numpy(np.flatnonzero(masks["val"])), 0],
                        frame["label"].to_numpy()[masks["val"]],
                        data.features[torch.from_numpy(np.flatnonzero(masks["test"])), 0])
    callbacks = [instantiate(cfg.callbacks.finetune), recorder]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return masks["test"], recorder


def scores(frame: pd.DataFrame, p: np.ndarray, fold: np.ndarray) -> tuple[float, float, pd.DataFrame]:
    slices = pd.DataFrame({"fold": fold, "group": frame["group"].astype(str), "label": frame["label"], "p": p})
    series = series_scores(slices, SERIES)
    return roc_auc_score(slices["label"], p), roc_auc_score(series["label"], series["score"]), series


def paired(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """Series AUC of b minus a, with a 95% bootstrap interval over series (both scored on each resample)."""
    y = a["label"].to_numpy()

    def diff(idx: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"d": roc_auc_score(labels, b["score"].to_numpy()[idx]) - roc_auc_score(labels, a["score"].to_numpy()[idx])}

    idx = np.arange(len(y))
    lo, hi = bootstrap_ci(diff, idx, y, n_resamples=n_resamples, seed=seed)["d"]
    return diff(idx, y)["d"], lo, hi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 12, 20, 30])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rules", nargs="+", default=["best", "last", "stop"])
    parser.add_argument("--cache", default=".cache/lungcnn/features", help="feature_cache.dir")
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.repeats))
    oof: dict[str, dict[int, np.ndarray]] = {}  # "variant rule@E" -> seed -> out-of-fold P(malignant)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in args.variants:
            start = time.perf_counter()
            cfg = compose("train", overrides=["experiment=iqothnccd", f"data.root={args.root}", "run_dir=/tmp/recipe_search",
                                              "data.output_dir=null",
                                              f"feature_cache.dir={args.cache}", f"trainer.max_epochs={max(args.epochs)}",
                                              *VARIANTS[name]])
            base = build_datamodule(cfg)
            base.setup("fit")
            if base.skipped:
                sys.exit(f"unreadable images change the folds: {base.skipped}")
            features = feature_datamodule(cfg, base, build_model(cfg, base)).features.numpy()
            for seed in seeds:
                p = {key: np.zeros(len(base.frame)) for key in (f"{r}@{e}" for r in args.rules for e in args.epochs)}
                fold_of = np.zeros(len(base.frame), int)
                for k in range(args.folds):
                    test, rec = fit_fold(cfg, base, features, seed, k, args.folds)
                    fold_of[test] = k
                    for rule in args.rules:
                        for e in args.epochs:
                            p[f"{rule}@{e}"][test] = rec.test_p[checkpoint_epoch(rec.val_auc, rule, e)]
                for key, values in p.items():
                    oof.setdefault(f"{name} {key}", {})[seed] = values
                oof.setdefault("_fold", {})[seed] = fold_of
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    frame = base.frame
    table, series = [], {}
    for key in (k for k in oof if k != "_fold"):
        row: dict = {"variant": key}
        for seed in seeds:
            s_auc, r_auc, series[key, seed] = scores(frame, oof[key][seed], oof["_fold"][seed])
            row[f"slice_auc_s{seed}"], row[f"series_auc_s{seed}"] = s_auc, r_auc
        table.append(row)
    table = pd.DataFrame(table)
    for level in ("slice", "series"):
        cols = [f"{level}_auc_s{s}" for s in seeds]
        table[f"{level}_min"], table[f"{level}_mean"] = table[cols].min(axis=1), table[cols].mean(axis=1)
    baseline = table["variant"].iloc[0]
    for seed in seeds:
        diffs = [paired(series[baseline, seed], series[key, seed], args.n_resamples, seed) for key in table["variant"]]
        table[f"series_diff_s{seed}"] = [f"{d:+.3f} ({lo:+.3f}, {hi:+.3f})" for d, lo, hi in diffs]
    table = table.sort_values(["slice_min", "series_min"], ascending=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if args.out:
        write_json(args.out, {"table": json.loads(table.to_json(orient="records")), "baseline": baseline,
                              "seeds": seeds, "folds": args.folds, "epochs": args.epochs, "root": args.root})
    return 0


if __name__ == "__main__":
    sys.exit(main())
