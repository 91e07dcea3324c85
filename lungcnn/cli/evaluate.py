"""`lungcnn evaluate ckpt=PATH [data_root=FOLDER] [split=test]` (Hydra): the test report of a checkpoint.

Runs the checkpoint's Predictor over the run's test split (or any labelled folder) and writes report.json,
report.md, plots and predictions.csv (`lungcnn.evaluation.evaluate.evaluate`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungcnn import CONF_DIR
from lungcnn.cli import friendly_errors
from lungcnn.evaluation.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@friendly_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg.ckpt, cfg.data_root, cfg.split, cfg.out_dir, cfg.n_resamples, cfg.seed, cfg.feature_cache,
             cfg.gradcam_images)


if __name__ == "__main__":
    main()
