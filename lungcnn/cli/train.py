"""`lungcnn train [experiment=NAME] [key=value ...]` (Hydra; `-m` for sweeps): fit, test, write the run folder.

Builds the data module, model, callbacks, loggers and trainer from `conf/` (`lungcnn.training.train`), fits
with the configured fine-tuning, tests the best checkpoint, and writes `split.csv`, `checkpoints/` and
`metrics.json` into the run directory. Returns the sweep objective to Hydra's sweepers.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungcnn import CONF_DIR
from lungcnn.cli import friendly_errors
from lungcnn.training.train import train_objective


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float:
    return train_objective(cfg)


if __name__ == "__main__":
    main()
