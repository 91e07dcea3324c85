"""`lungcnn calibrate ckpt=PATH [calibration.method=temperature|isotonic] [key=value ...]` (Hydra).

Fits the calibration on the validation split's outputs (never the test split), chooses the operating
threshold for `target_sensitivity`, fits the domain guard, and writes a new calibrated checkpoint
(`lungcnn.calibration.fit.calibrate`); the original is untouched.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from lungcnn import CONF_DIR
from lungcnn.calibration.fit import calibrate
from lungcnn.calibration.guard import GuardConfig
from lungcnn.cli import friendly_errors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="calibrate")
@friendly_errors
def main(cfg: DictConfig) -> None:
    calibrate(cfg.ckpt, cfg.out, cfg.calibration.method, cfg.calibration.target_sensitivity, cfg.data_root, cfg.overwrite,
              cfg.calibration.prior_correction, cfg.calibration.decision, cfg.calibration.tta,
              GuardConfig(**OmegaConf.to_container(cfg.calibration.guard)), cfg.feature_cache,
              cfg.calibration.series_sensitivity, cfg.calibration.novelty)


if __name__ == "__main__":
    main()
