"""Which head recipe on the frozen backbone? Variants compared on the yardstick's own repeated grouped folds.

Every variant trains through lungcnn's own path (the Hydra config of `experiment=iqothnccd` plus the variant's
overrides, `build_model`, the fine-tuning callback, a Lightning Trainer) on cached features
(`lungcnn.features`), on the same R seeds x K grouped folds `python -m lungcnn.cv run` draws (`assign_splits`
with data.n_folds / data.fold / seed). A fit runs to the largest epoch count asked for and records, at every
epoch, the head's validation AUC and its test-fold probabilities; the learning-rate schedule and the sampler's
draws do not depend on trainer.max_epochs, so epoch E of that fit is a run with max_epochs=E, and each
checkpoint rule is read from the same fit: `last@E` (the last epoch), `best@E` (the epoch of the highest
validation AUC, as the default ModelCheckpoint keeps it), `stop@E` (early stopping, patience 3 on validation AUC).

Each fold is calibrated as `lungcnn.calibrate` does it, on its own validation split (prior shift, temperature,
the strictest threshold reaching --target-sensitivity); the domain guard is not applied. Figures per repeat,
pooled over its K folds (every image tested once): slice ROC-AUC, series ROC-AUC (the project's series rule:
mean of the 3 most suspicious slices, `lungcnn.evaluation.series_level`), slice ECE, and slice and series
sensitivity / specificity at each fold's threshold; paired differences from --baseline, the series-AUC one
with a 95% bootstrap interval over series (the same resamples for both).

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

from lungcnn.calibration.prior import prior_shift
from lungcnn.calibration.temperature import fit_temperature
from lungcnn.calibration.threshold import threshold_for_sensitivity
from lungcnn.data.splits import assign_splits
from lungcnn.evaluation.series_level import series_scores
from lungcnn.features.data import FeatureDataModule, feature_datamodule
from lungcnn.fileio import write_json
from lungcnn.metrics.classification import binary_metrics
from lungcnn.spec import SeriesRule
from lungcnn.training.train import build_datamodule, build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
SERIES = SeriesRule("topk_mean", 3)

# name -> Hydra overrides on top of experiment=iqothnccd.
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
    "mlp noaug drop0": ["feature_cache.views=0", "model.dropout=0.0"],
    "mlp noaug drop0.5": ["feature_cache.views=0", "model.dropout=0.5"],
    "mlp noaug h256": ["feature_cache.views=0", "model.hidden=256"],
    "mlp noaug h512": ["feature_cache.views=0", "model.hidden=512"],
    "mlp noaug lr3e-4": ["feature_cache.views=0", "model.head_lr=3e-4"],
    "mlp noaug lr3e-3": ["feature_cache.views=0", "model.head_lr=3e-3"],
    "mlp noaug blocks": ["feature_cache.views=0", "model.features=blocks"],
    "linear noaug blocks": ["model.hidden=0", "feature_cache.views=0", "model.features=blocks"],
}


class Recorder(L.Callback):
    """At every validation: the validation AUC and the logits of the validation and test images (view 0)."""

    def __init__(self, val: torch.Tensor, val_labels: np.ndarray, test: torch.Tensor) -> None:
        self.val, self.val_labels, self.test = val, val_labels, test
        self.val_auc: list[float] = []
        self.logits: list[tuple[np.ndarray, np.ndarray]] = []

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        z = tuple(pl_module(x).double().numpy() for x in (self.val, self.test))
        self.val_auc.append(float(roc_auc_score(self.val_labels, z[0])))
        self.logits.append(z)


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


def fit_fold(cfg, base, features: np.ndarray, seed: int, fold: int, folds: int) -> tuple[pd.Series, Recorder]:
    """Train one fold on cached features through lungcnn's model, callbacks and trainer; return its split."""
    images = copy.copy(base)
    frame = base.frame.drop(columns="split")
    frame["split"] = assign_splits(frame, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                                   seed=seed, grouped=True, n_folds=folds, fold=fold)
    images.frame, images.seed = frame, seed
    data = FeatureDataModule(images, features)
    L.seed_everything(seed, workers=True)
    model = build_model(cfg, images)
    rows = {s: torch.from_numpy(np.flatnonzero(frame["split"] == s)) for s in ("val", "test")}
    recorder = Recorder(data.features[rows["val"], 0], frame["label"].to_numpy()[rows["val"].numpy()],
                        data.features[rows["test"], 0])
    callbacks = [instantiate(cfg.callbacks.finetune), recorder]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return frame["split"], recorder


def calibrated(split: pd.Series, labels: np.ndarray, val_logits: np.ndarray, test_logits: np.ndarray,
               imbalance: str, target: float) -> tuple[np.ndarray, float]:
    """Test P(malignant) and the operating threshold as `lungcnn.calibrate` fits them on the validation split:
    prior correction for the training balance, temperature, the strictest threshold reaching `target` sensitivity."""
    train = labels[(split == "train").to_numpy()]
    shift = prior_shift(np.bincount(train, minlength=2), imbalance)
    y_val = labels[(split == "val").to_numpy()]
    t = fit_temperature(val_logits + shift, y_val).temperature
    p_val, p_test = (1 / (1 + np.exp(-(z + shift) / t)) for z in (val_logits, test_logits))
    return p_test, float(threshold_for_sensitivity(p_val, y_val, target))


def figures(frame: pd.DataFrame, p: np.ndarray, threshold: np.ndarray, fold: np.ndarray) -> tuple[dict, pd.DataFrame]:
    """Slice and series figures of one repeat's pooled out-of-fold calibrated predictions."""
    y = frame["label"].to_numpy()
    slices = pd.DataFrame({"fold": fold, "group": frame["group"].astype(str).to_numpy(), "label": y, "p": p, "t": threshold})
    series = series_scores(slices, SERIES).merge(slices.groupby(["fold", "group"])["t"].first().reset_index())
    # Each fold's own threshold; the decisions scored as 0/1 "probabilities" at 0.5, as crossval.pooled_metrics does.
    at = binary_metrics((p >= threshold).astype(float), y)
    series_at = binary_metrics((series["score"] >= series["t"]).to_numpy(float), series["label"].to_numpy())
    out = {"slice_auc": roc_auc_score(y, p), "series_auc": roc_auc_score(series["label"], series["score"]),
           "slice_ece": binary_metrics(p, y)["ece"], "slice_sens": at["sensitivity"], "slice_spec": at["specificity"],
           "series_sens": series_at["sensitivity"], "series_spec": series_at["specificity"]}
    return out, series


def paired(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """Series AUC of b minus a on the same series, with a 95% percentile interval from a class-stratified
    bootstrap over series (both scored on each resample; the AUC by pair counting, vectorised: the generic
    `bootstrap_ci` costs ~70 ms a resample here, too slow for dozens of comparisons)."""
    if not (a["group"].to_numpy() == b["group"].to_numpy()).all():
        raise ValueError("paired differences need the same series in the same order")
    y = a["label"].to_numpy()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    draws = [(pos, neg)] + [(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(n_resamples)]
    diffs = np.array([_auc(b["score"].to_numpy(), i, j) - _auc(a["score"].to_numpy(), i, j) for i, j in draws])
    return float(diffs[0]), *(float(q) for q in np.percentile(diffs[1:], [2.5, 97.5]))


def _auc(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC as P(score of a positive > score of a negative), ties counted half."""
    d = score[pos][:, None] - score[neg][None, :]
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


def search(args: argparse.Namespace) -> dict:
    """Fit every variant on every fold; return the frame and each (variant rule@E, seed)'s out-of-fold arrays."""
    torch.set_num_threads(1)
    runs: dict = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in args.variants:
            start = time.perf_counter()
            cfg = compose("train", overrides=["experiment=iqothnccd", f"data.root={args.root}", "run_dir=/tmp/recipe_search",
                                              "data.output_dir=null", f"feature_cache.dir={args.cache}",
                                              f"trainer.max_epochs={max(args.epochs)}", *VARIANTS[name]])
            base = build_datamodule(cfg)
            base.setup("fit")
            if base.skipped:
                sys.exit(f"unreadable images change the folds: {base.skipped}")
            features = feature_datamodule(cfg, base, build_model(cfg, base)).features.numpy()
            labels = base.frame["label"].to_numpy()
            for seed in range(args.first_seed, args.first_seed + args.repeats):
                arrays = {f"{r}@{e}": {"p": np.zeros(len(labels)), "t": np.zeros(len(labels))}
                          for r in args.rules for e in args.epochs}
                fold_of = np.zeros(len(labels), int)
                for k in range(args.folds):
                    split, rec = fit_fold(cfg, base, features, seed, k, args.folds)
                    test = (split == "test").to_numpy()
                    fold_of[test] = k
                    for key, a in arrays.items():
                        rule, epochs = key.split("@")
                        val_z, test_z = rec.logits[checkpoint_epoch(rec.val_auc, rule, int(epochs))]
                        a["p"][test], a["t"][test] = calibrated(split, labels, val_z, test_z, cfg.data.imbalance,
                                                                args.target_sensitivity)
                for key, a in arrays.items():
                    runs[f"{name} {key}|{seed}"] = {"p": a["p"].tolist(), "t": a["t"].tolist(), "fold": fold_of.tolist()}
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return {"frame": base.frame[["file", "group", "label"]].astype({"group": str}).to_dict(orient="list"), "runs": runs,
            "repeats": args.repeats, "folds": args.folds, "root": args.root}


def table(results: list[dict], baseline: str, n_resamples: int) -> pd.DataFrame:
    frame = pd.DataFrame(results[0]["frame"])
    runs = {k: v for r in results for k, v in r["runs"].items()}
    seeds = sorted({int(k.split("|")[1]) for k in runs})
    rows, series = [], {}
    for key in dict.fromkeys(k.split("|")[0] for k in runs):
        row: dict = {"variant": key}
        for seed in seeds:
            run = runs[f"{key}|{seed}"]
            got, series[key, seed] = figures(frame, np.array(run["p"]), np.array(run["t"]), np.array(run["fold"]))
            row.update({f"{name}_s{seed}": value for name, value in got.items()})
        rows.append(row)
    out = pd.DataFrame(rows)
    for name in ("slice_auc", "series_auc", "slice_ece", "series_sens", "series_spec"):
        cols = [f"{name}_s{s}" for s in seeds]
        for stat in ("min", "max", "mean"):
            out[f"{name}_{stat}"] = getattr(out[cols], stat)(axis=1)
    for seed in seeds:
        diffs = [paired(series[baseline, seed], series[key, seed], n_resamples, seed) for key in out["variant"]]
        out[f"series_auc_diff_s{seed}"] = [f"{d:+.3f} ({lo:+.3f}, {hi:+.3f})" for d, lo, hi in diffs]
        base = out.loc[out["variant"] == baseline, f"slice_auc_s{seed}"].iloc[0]
        out[f"slice_auc_diff_s{seed}"] = out[f"slice_auc_s{seed}"] - base
    return out.sort_values(["slice_auc_min", "series_auc_min"], ascending=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="the dataset folder (fits the variants)")
    parser.add_argument("--combine", nargs="+", type=Path, help="score the --save files of earlier runs together")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + repeats - 1: "
                        "fresh folds to confirm a variant chosen on other seeds")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 12, 20])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rules", nargs="+", default=["best", "last", "stop"])
    parser.add_argument("--baseline", default="mlp best@12", help="the variant paired differences are taken from")
    parser.add_argument("--target-sensitivity", type=float, default=0.98, help="as lungcnn.calibrate's default")
    parser.add_argument("--cache", default=".cache/lungcnn/features", help="feature_cache.dir")
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--save", type=Path, help="write the out-of-fold predictions (for --combine)")
    parser.add_argument("--out", type=Path, help="write the table as JSON")
    args = parser.parse_args(argv)
    if bool(args.root) == bool(args.combine):
        parser.error("give --root (fit) or --combine FILES (score)")
    results = [json.loads(f.read_text()) for f in args.combine] if args.combine else [search(args)]
    if args.save:
        write_json(args.save, results[0])
    out = table(results, args.baseline, args.n_resamples)
    pd.set_option("display.width", 400)
    pd.set_option("display.max_columns", 200)
    cols = ["variant"] + [c for c in out.columns if c.endswith(("_min", "_mean", "_max"))]
    print(out[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"), flush=True)
    if args.out:
        write_json(args.out, json.loads(out.to_json(orient="records")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
