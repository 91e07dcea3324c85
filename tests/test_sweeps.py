"""Multirun sweeps, launchers, the Optuna search, the sweep report and DDP on CPU, run as a user runs them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from lungcnn.errors import LungCNNInputError
from lungcnn.sweeps.objective import objective_value
from lungcnn.sweeps.resources import core_share, cpus_for_job

from .conftest import CONF, ROOT, tiny_overrides


def _run(module: str, args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _train(args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return _run("lungcnn.train", args, timeout, env)


def _job_logs(sweep_dir) -> str:
    return "".join(p.read_text() for p in sorted(sweep_dir.glob("*/train.log")))


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_local_launchers_run_jobs_side_by_side(launcher, tiny_root, tmp_path):
    done = _train(["-m", f"hydra/launcher={launcher}", *tiny_overrides(tiny_root), "trainer.fast_dev_run=true",
                   "seed=0,1", f"hydra.sweep.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validated against ConfigStore schema" not in done.stderr
    assert all((tmp_path / job / "metrics.json").is_file() for job in ("0", "1"))
    # Each job took its share of the cores, not the whole machine.
    assert _job_logs(tmp_path).count("parallel sweep: this job uses") == 2
    assert "fast_dev_run: val/roc_auc is one batch" in _job_logs(tmp_path)


def test_multirun_report_and_wandb_offline(tiny_root, tmp_path):
    """A real (tiny) two-job sweep with the wandb logger offline, then the sweep report over its folder."""
    sweep = tmp_path / "sweep"
    done = _train(["-m", "model.head_lr=1e-3,1e-2", *tiny_overrides(tiny_root), "trainer.max_epochs=1", "logger=wandb",
                   f"hydra.sweep.dir={sweep}"], env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    # One offline wandb run per job (each job closes its run), beside the CSV log.
    for job in ("0", "1"):
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), job
        assert (sweep / job / "csv" / "metrics.csv").is_file()

    out = tmp_path / "report"
    done = _run("lungcnn.sweep_report", [str(sweep), "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["job"]) == [0, 1] and sorted(table["model.head_lr"]) == [1e-3, 1e-2]
    for job in (0, 1):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert table.loc[job, "val/roc_auc"] == pytest.approx(metrics["val"]["roc_auc"])
        assert table.loc[job, "objective"] == pytest.approx(metrics["val"]["roc_auc"])
    best = json.loads((out / "best.json").read_text())["best"]
    assert best["value"] == pytest.approx(table["objective"].max())
    assert best["params"] == {"model.head_lr": table.loc[table["objective"].idxmax(), "model.head_lr"]}
    assert "model.head_lr=" in best["command"]
    assert (out / "objective_vs_model.head_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**Best configuration:**" in (out / "sweep.md").read_text()


def test_optuna_study_resumes_from_its_storage(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for run in ("first", "second"):
        done = _train(["hparams_search=optuna", "hydra.sweeper.n_trials=1", *tiny_overrides(tiny_root),
                       "trainer.fast_dev_run=true", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=t",
                       f"hydra.sweep.dir={tmp_path / run}"])
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / run / "optimization_results.yaml").is_file()
    out = tmp_path / "report"
    done = _run("lungcnn.sweep_report", ["--storage", storage, "--study", "t", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["job"]) == ["trial 0", "trial 1"]  # the second invocation added to the first's study
    assert table["note"].eq("not measured").all()  # fast_dev_run: a value that can never win
    assert json.loads((out / "best.json").read_text())["best"] is None


def _launcher_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True).hydra.launcher


def test_slurm_launcher_config_composes_without_a_cluster():
    launcher = _launcher_config(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                 "hydra.launcher.timeout_min=30"])
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.cpus_per_task, launcher.timeout_min,
            launcher.array_parallelism) == ("gpu", 1, 8, 30, 16)
    assert "qos" in launcher  # filled in from the plugin's schema, which also checks every field of ours
    with pytest.raises(ConfigCompositionException, match="partiton"):
        _launcher_config(["hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu"])


def test_report_refuses_a_folder_that_is_no_sweep(tmp_path):
    done = _run("lungcnn.sweep_report", [str(tmp_path)])
    assert done.returncode == 2 and "not a multirun folder" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("launcher", "cores", "expected"), [
    ({}, 8, None),  # basic launcher: one job at a time
    ({"n_jobs": 2}, 2, 1), ({"n_jobs": 2}, 8, 4), ({"n_jobs": -1}, 8, 1), ({"n_jobs": -3}, 8, 1),
    ({"n_jobs": 16}, 8, 1), ({"cpus_per_task": 3, "n_jobs": None}, 8, 3), ({"cpus_per_task": 32}, 8, 8),
])
def test_each_job_gets_its_share_of_the_cores(launcher, cores, expected):
    assert cpus_for_job(launcher, cores) == expected


def test_a_sweeper_that_hands_over_fewer_jobs_leaves_each_more_cores():
    assert cpus_for_job({"n_jobs": 2}, 8, batch=1) == 8  # Optuna with n_jobs=1: one trial at a time
    assert cpus_for_job({"n_jobs": 4}, 8, batch=2) == 4
    assert cpus_for_job({"cpus_per_task": 2}, 8, batch=1) == 2  # submitit: what the user asked for


def test_loader_workers_fit_in_the_share():
    assert core_share(4, {"n_jobs": 2}, cores=8).loader_workers == 3
    assert core_share(4, {"n_jobs": 2}, cores=2).loader_workers == 0
    assert core_share(4, {}, cores=2) is None
    with pytest.raises(LungCNNInputError):
        cpus_for_job({"n_jobs": 0}, 2)


def test_objective_never_passes_off_an_unmeasured_value():
    result = {"val": {"roc_auc": 0.8, "loss": float("nan")}, "test": {}}
    assert objective_value(result, "val/roc_auc", fast_dev_run=False, direction="maximize") == 0.8
    assert objective_value(result, "val/roc_auc", fast_dev_run=True, direction="maximize") == -math.inf
    assert objective_value(result, "val/loss", fast_dev_run=False, direction="minimize") == math.inf
    assert math.isnan(objective_value(result, "val/roc_auc", fast_dev_run=True, direction=None))
    with pytest.raises(LungCNNInputError, match="val/roc_auc"):
        objective_value(result, "val/auroc", fast_dev_run=False, direction="maximize")
    assert math.isnan(objective_value(result, "val/auroc", fast_dev_run=False, direction=None))  # nothing optimises
    with pytest.raises(LungCNNInputError):
        objective_value(result, "roc_auc", fast_dev_run=False, direction="maximize")


def test_ddp_on_cpu_with_two_processes(tiny_root, tmp_path):
    done = _train(["trainer=ddp", *tiny_overrides(tiny_root), "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "metrics.json").is_file()
    assert "GLOBAL_RANK: 1" in done.stderr + done.stdout or "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in (
        done.stderr + done.stdout)


def test_bad_config_value_is_one_line_and_exit_code_2(tiny_root, tmp_path):
    done = _train([*tiny_overrides(tiny_root), "data.image_size=16", f"hydra.run.dir={tmp_path}"])
    assert done.returncode == 2
    assert "image_size" in done.stderr and "Traceback" not in done.stderr
