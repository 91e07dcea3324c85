"""Which series rule? A cheap measurement on the dev set: a frozen-feature linear probe under grouped CV.

Fine-tuning five folds takes hours on this shared 2-core machine, so this script measures the series rules on
the out-of-fold slice predictions of a linear probe instead: frozen ImageNet MobileNetV2 features (224 px, the
TF weights of the training recipe) of every benign and malignant image of the dev set, logistic regression
under grouped 5-fold CV (no series in two folds), repeated with R shuffles. Each repeat's out-of-fold
P(malignant) is scored per series by every candidate rule (`lungcnn.evaluation.series_level`): series
ROC-AUC with a series bootstrap interval, beside the slice-level AUC. A probe is not the fine-tuned model: it
ranks the rules, it does not give the model's figures.

    python scripts/series_probe.py --root ../shared/data/iqothnccd-dev [--repeats 3] [--out series_probe.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungcnn.evaluation.series_level import markdown, score_rules
from lungcnn.fileio import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_features import features  # noqa: E402  (the sibling script's feature extractor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    table = pd.read_csv(args.root / "groups.csv")
    table = table[table["label"].str.lower().isin(["benign", "malignant"])].reset_index(drop=True)
    start = time.perf_counter()
    x = features([str(args.root / f) for f in table["file"]], 224, weights="tf")
    print(f"features of {len(table)} images in {time.perf_counter() - start:.0f} s", flush=True)
    y = (table["label"].str.lower() == "malignant").to_numpy(int)
    groups = table["group"].astype(str).to_numpy()
    results = []
    for r in range(args.repeats):
        p, fold = np.zeros(len(y)), np.zeros(len(y), int)
        splits = StratifiedGroupKFold(args.folds, shuffle=True, random_state=r).split(x, y, groups)
        for k, (train, test) in enumerate(splits):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
            p[test], fold[test] = clf.fit(x[train], y[train]).predict_proba(x[test])[:, 1], k
        slices = pd.DataFrame({"fold": fold, "group": groups, "label": y, "p": p})  # each series tested once per repeat
        results.append(score_rules(slices, n_resamples=args.n_resamples, seed=r))
        print(f"\nrepeat {r} (grouped {args.folds}-fold shuffle seed {r})\n{markdown(results[-1])}", flush=True)
    names = list(results[0]["rules"])
    print("\nmean series ROC-AUC over repeats: " + ", ".join(
        f"{n} {np.mean([res['rules'][n]['roc_auc'] for res in results]):.3f}" for n in names), flush=True)
    if args.out:
        write_json(args.out, {"repeats": results, "n_images": len(y)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
