"""Multirun sweeps, the Optuna search and DDP on CPU, run as a user runs them (subprocesses)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT, tiny_overrides


def _train(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungcnn.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_multirun_gives_one_run_directory_per_job(tiny_root, tmp_path):
    done = _train(["-m", "model.head_lr=1e-3,3e-4", *tiny_overrides(tiny_root), "trainer.fast_dev_run=true",
                   f"hydra.sweep.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((tmp_path / job / "metrics.json").is_file() for job in ("0", "1"))


def test_optuna_search_runs_trials(tiny_root, tmp_path):
    done = _train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
                   *tiny_overrides(tiny_root), "trainer.fast_dev_run=true", f"hydra.sweep.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "optimization_results.yaml").is_file()


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
