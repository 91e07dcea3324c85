"""Training one configuration (`lungcnn train`, `lungcnn.cli.train`).

Builds the data module, model, callbacks, loggers and trainer from `conf/` with
`hydra.utils.instantiate`, fits with two-stage fine-tuning, tests the best checkpoint, and writes
`split.csv`, `checkpoints/`, `metrics.json` into the run directory.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lungcnn.errors import LungCNNInputError, fail, require_bool
from lungcnn.features import data as features
from lungcnn.fileio import write_json
from lungcnn.models.backbone import normalization_for
from lungcnn.models.checkpoint import load_checkpoint
from lungcnn.sweeps.objective import objective_value, sweeper_direction
from lungcnn.sweeps.resources import apply_core_share
from lungcnn.training import config_check
from lungcnn.training.callbacks.resume import keep_csv_history, resolve_ckpt_path, resume_callbacks
from lungcnn.training.checkpoint_io import AtomicCheckpointIO

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, num_workers: int | None = None) -> L.LightningDataModule:
    default_mean, default_std = normalization_for(cfg.model.backbone)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    return instantiate(cfg.data, mean=cfg.data.mean or default_mean, std=cfg.data.std or default_std,
                       num_workers=workers, _convert_="all")


def build_model(cfg: DictConfig, datamodule) -> L.LightningModule:
    return instantiate(cfg.model, class_names=datamodule.class_names, preprocessing=datamodule.preprocessing(),
                       pos_weight=datamodule.pos_weight(), class_weights=datamodule.class_weights(),
                       data=datamodule.describe(), _convert_="all")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; return the metrics written to metrics.json."""
    _check_run(cfg)
    config_check.validate(cfg)
    cached = features.wanted(cfg)  # feature_cache.*: a frozen backbone's features computed once, not every epoch
    run_dir = Path(cfg.run_dir)
    ckpt_path = resolve_ckpt_path(cfg)  # ckpt_path, or "last" for resume=true
    _refuse_overwrite(run_dir, ckpt_path)
    if ckpt_path not in (None, "last"):
        load_checkpoint(ckpt_path)  # a foreign or code-carrying file stops here, in one line, before any work
    L.seed_everything(cfg.seed, workers=True)
    # A job of a parallel sweep takes its share of the cores (threads, loader workers); alone it takes them all.
    datamodule = build_datamodule(cfg, num_workers=apply_core_share(cfg.data.num_workers))
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    if cached:
        datamodule = features.feature_datamodule(cfg, datamodule, model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += resume_callbacks(cfg.seed, callbacks)  # exact resume: per-epoch seeds, last.ckpt every epoch
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    keep_csv_history(loggers, ckpt_path)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()])  # checkpoints written atomically, like every output
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    # Validation figures of the checkpoint that was kept, not of the last epoch.
    validated = trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    result: dict[str, Any] = {"val": _scalars(validated[0] if validated else {}, "val/")}
    if cfg.test:
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        result["test"] = _scalars(tested[0] if tested else {}, "test/")
    result.update(best_checkpoint=best, seed=cfg.seed, data=datamodule.data_note(),
                  split={k: int(v) for k, v in datamodule.frame["split"].value_counts().items()},
                  skipped_images=datamodule.skipped)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
        print(format_table(result), flush=True)
    _finish_wandb()
    return result


def _check_run(cfg: DictConfig) -> None:
    """The run's own keys: seed, test, resume, ckpt_path."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        fail("seed", "an integer", cfg.seed)
    require_bool("test", cfg.test)
    require_bool("resume", cfg.get("resume", False))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and str(ckpt_path) not in ("last", "hpc") and not Path(str(ckpt_path)).is_file():
        raise LungCNNInputError(f"ckpt_path: checkpoint not found: {ckpt_path} (or pass ckpt_path=last / resume=true)")


def _refuse_overwrite(run_dir: Path, ckpt_path: str | None) -> None:
    if ckpt_path is None and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.ckpt")):
        raise LungCNNInputError(
            f"{run_dir} already holds a trained run; pass resume=true (or ckpt_path=last) to resume it, or choose another "
            "hydra.run.dir"
        )


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): float(v) for k, v in metrics.items() if k.startswith(prefix)}


def format_table(result: dict[str, Any]) -> str:
    names = sorted(set(result.get("val", {})) | set(result.get("test", {})))
    lines = [f"{'metric':<20}{'val':>10}{'test':>10}", "-" * 40]
    for name in names:
        cells = [result.get(split, {}).get(name, math.nan) for split in ("val", "test")]
        lines.append(f"{name:<20}" + "".join(f"{c:>10.4f}" for c in cells))
    lines.append(f"data: {result['data']}; split sizes {result['split']}; best checkpoint: {result['best_checkpoint']}")
    return "\n".join(lines)


def _finish_wandb() -> None:
    # Under a Hydra multirun each job must close its wandb run, or the next job logs into it.
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def train_objective(cfg: DictConfig) -> float:
    """Train `cfg` and return the value a Hydra sweeper optimises (`optimized_metric`, signed by its direction)."""
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    result = train(cfg)
    return objective_value(result, cfg.optimized_metric, fast_dev_run=bool(cfg.trainer.get("fast_dev_run")),
                           direction=sweeper_direction())
