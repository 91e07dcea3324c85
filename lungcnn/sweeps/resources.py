"""Each job of a parallel sweep takes its share of the machine's cores, so side-by-side jobs do not fight.

The share comes from the launcher's own settings (`conf/hydra/launcher/`): joblib runs `n_jobs` jobs at once, so
each takes cores // n_jobs; submitit jobs take `cpus_per_task` (on SLURM that is also the job's allocation, whose
CPU affinity already holds it to those cores). A single run, or a sweep under Hydra's basic launcher (one job
after another), keeps the whole machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lungcnn.errors import LungCNNInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreShare:
    """What one job may use: torch intra-op threads and data-loader worker processes."""

    threads: int
    loader_workers: int


def available_cores() -> int:
    """Cores this process may run on (the CPU affinity mask, which SLURM and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpus_for_job(launcher: Mapping[str, Any], cores: int, batch: int | None = None) -> int | None:
    """Cores one job may use under `launcher` (a `hydra.launcher` config); None when it runs jobs one at a time.

    Args:
        launcher: the launcher's config: `cpus_per_task` (submitit) or `n_jobs` (joblib; -1 = one job per core).
        cores: cores available to the process.
        batch: the most jobs the sweeper hands the launcher at once (Optuna's `n_jobs`), if it limits them.
    """
    per_task = launcher.get("cpus_per_task")
    if per_task is not None:
        if int(per_task) < 1:
            raise LungCNNInputError(f"hydra.launcher.cpus_per_task must be >= 1, got {per_task}")
        return min(int(per_task), cores)
    at_once = launcher.get("n_jobs")
    if at_once is None:
        return None
    at_once = int(at_once)
    if at_once == 0:
        raise LungCNNInputError("hydra.launcher.n_jobs must not be 0 (a count, or -1 for one job per core)")
    if at_once < 0:  # joblib's convention: -1 = every core, -2 = all but one, ...
        at_once = max(cores + 1 + at_once, 1)
    if batch is not None and batch > 0:
        at_once = min(at_once, batch)
    return max(cores // at_once, 1)


def core_share(requested_workers: int, launcher: Mapping[str, Any], cores: int | None = None,
               batch: int | None = None) -> CoreShare | None:
    """One job's share of the cores under `launcher`, or None when the job has the machine to itself.

    Loader workers are capped at the job's cores minus the one its training loop keeps busy.

    Args:
        requested_workers: `data.num_workers` as configured.
        launcher: the running sweep's `hydra.launcher` config.
        cores: cores available to the process (default: the affinity mask).
        batch: the most jobs the sweeper hands the launcher at once, if it limits them.
    """
    cpus = cpus_for_job(launcher, available_cores() if cores is None else cores, batch)
    if cpus is None:
        return None
    return CoreShare(threads=cpus, loader_workers=min(requested_workers, cpus - 1))


def apply_core_share(requested_workers: int) -> int:
    """Under a parallel launcher, limit torch's threads to this job's share; return the loader workers it may start."""
    launcher, batch = _running_sweep()
    share = core_share(requested_workers, launcher, batch=batch)
    if share is None:
        return requested_workers
    torch.set_num_threads(share.threads)
    log.info("parallel sweep: this job uses %d torch thread(s) and %d loader worker(s)", share.threads,
             share.loader_workers)
    return share.loader_workers


def _running_sweep() -> tuple[Mapping[str, Any], int | None]:
    """The running sweep's launcher config and the sweeper's batch size (Optuna: n_jobs; basic: max_batch_size)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}, None
    hydra = HydraConfig.get()
    batch = hydra.sweeper.get("n_jobs") or hydra.sweeper.get("max_batch_size")
    return hydra.launcher, int(batch) if batch else None
