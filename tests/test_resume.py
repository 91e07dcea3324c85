"""Crash and resume: a run SIGKILLed between or in the middle of epochs, resumed in the same run directory,
ends exactly where an uninterrupted run with the same seed ends (CPU).

The tiny dataset's validation split holds one class, so its ROC AUC is flat and best.ckpt stays at epoch 0:
equal metrics.json files alone would prove little. The final last.ckpt (weights and optimizer state) is
compared bit for bit as well.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lungcnn.data.datamodule import CachedImages, EpochSampler
from lungcnn.data.transforms import build_transform
from lungcnn.fileio import atomic_open, write_json
from lungcnn.training.callbacks.resume import resolve_ckpt_path
from lungcnn.training.checkpoint_io import AtomicCheckpointIO

from .conftest import ROOT, tiny_overrides

KILL_BETWEEN = ["+callbacks.killer._target_=tests.helpers.KillAfterEpoch", "+callbacks.killer.epoch=1"]
KILL_MID = ["+callbacks.killer._target_=tests.helpers.KillMidEpoch", "+callbacks.killer.epoch=1",
            "+callbacks.killer.batch=0"]


def _start(run_dir: Path, data: Path, extra: list[str] = ()) -> subprocess.Popen:
    args = [*tiny_overrides(data), "trainer.max_epochs=3", f"hydra.run.dir={run_dir}", *extra]
    # One thread each: three runs share the machine, and every run computes with the same thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    with (run_dir.parent / f"{run_dir.name}.log").open("a") as log:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", "lungcnn.train", *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, run_dir: Path, expect: int) -> None:
    code = proc.wait(timeout=150)
    log = (run_dir.parent / f"{run_dir.name}.log").read_text()
    assert code == expect, f"{run_dir.name} exited {code}, expected {expect}:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run, and two runs SIGKILLed (after epoch 1's checkpoint / mid-epoch 1) then resumed."""
    base = tmp_path_factory.mktemp("resume")
    dirs = {name: base / name for name in ("full", "between", "mid")}
    full = _start(dirs["full"], tiny_root)
    killers = {"between": _start(dirs["between"], tiny_root, KILL_BETWEEN), "mid": _start(dirs["mid"], tiny_root, KILL_MID)}
    killed, resumed = {}, {}
    for name, flag in (("between", "resume=true"), ("mid", "ckpt_path=last")):
        _wait(killers[name], dirs[name], -signal.SIGKILL)
        killed[name] = torch.load(dirs[name] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        resumed[name] = _start(dirs[name], tiny_root, [flag])  # at once, while the others still run
    for name, proc in (("full", full), *resumed.items()):
        _wait(proc, dirs[name], 0)
    dirs["killed"] = killed  # type: ignore[assignment]
    return dirs


def _metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert Path(metrics.pop("best_checkpoint")).parent == run_dir / "checkpoints"
    return metrics


def _assert_same_final_state(a: Path, b: Path) -> None:
    x, y = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for d in (a, b))
    assert (x["epoch"], x["global_step"]) == (y["epoch"], y["global_step"])
    assert x["state_dict"].keys() == y["state_dict"].keys()
    assert all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"])
    sx, sy = x["optimizer_states"][0], y["optimizer_states"][0]
    assert [g["lr"] for g in sx["param_groups"]] == [g["lr"] for g in sy["param_groups"]]
    assert all(torch.equal(sx["state"][i][k], sy["state"][i][k]) for i in sx["state"] for k in sx["state"][i])


@pytest.mark.slow
def test_kill_between_epochs_then_resume_matches_uninterrupted_run(runs):
    killed = runs["killed"]["between"]
    # last.ckpt is written at every epoch end (not only when val/roc_auc improves), so the crash cost one
    # epoch, and it was taken in stage 2: two optimizer param groups that the resume must restore.
    assert killed["epoch"] == 1 and len(killed["optimizer_states"][0]["param_groups"]) == 2
    assert _metrics(runs["between"]) == _metrics(runs["full"])
    _assert_same_final_state(runs["between"], runs["full"])
    # The pre-crash training log is kept beside the resumed one instead of being deleted by the CSVLogger.
    assert (runs["between"] / "csv" / "metrics.before-resume-1.csv").is_file()


@pytest.mark.slow
def test_kill_mid_epoch_resumes_from_the_last_epoch_end(runs):
    # Killed during epoch 1: what was trained of it is lost, the run restarts from the end of epoch 0.
    assert runs["killed"]["mid"]["epoch"] == 0
    assert _metrics(runs["mid"]) == _metrics(runs["full"])
    _assert_same_final_state(runs["mid"], runs["full"])


def test_epoch_sampler_draws_depend_on_seed_and_epoch_only():
    weights = torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.double)
    long_lived = EpochSampler(4, seed=3, weights=weights)
    history = [list(long_lived) for _ in range(3)]  # no set_epoch: each pass is the next epoch
    fresh = EpochSampler(4, seed=3, weights=weights)
    fresh.set_epoch(2)
    assert list(fresh) == history[2] and history[0] != history[1]
    assert sorted(i for i, _ in EpochSampler(5, seed=0)) == list(range(5))  # no weights: a permutation


def test_augmentation_is_a_function_of_the_draw_seed():
    import albumentations as A

    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    transform = build_transform((0.5,) * 3, (0.25,) * 3, [A.Affine(rotate=(-30, 30), p=1.0)], seed=0)
    data = CachedImages(images, np.array([0, 1]), transform)
    first = data[(1, 1234)][0]
    data[(0, 99)]  # anything drawn in between does not matter
    assert torch.equal(data[(1, 1234)][0], first) and not torch.equal(data[(1, 4321)][0], first)


def test_resume_flag_is_ckpt_path_last(tmp_path):
    def cfg(**values):
        return OmegaConf.create({"run_dir": str(tmp_path), "ckpt_path": None, "resume": False, **values})

    partial = tmp_path / "checkpoints" / ".last.ckpt.k2j4x9.tmp"  # a checkpoint write cut short by a kill
    partial.parent.mkdir()
    partial.write_bytes(b"half a checkpoint")
    assert resolve_ckpt_path(cfg()) is None and partial.exists()
    assert resolve_ckpt_path(cfg(resume=True)) == "last"  # nothing to resume yet: Lightning starts afresh
    assert not partial.exists()
    assert resolve_ckpt_path(cfg(resume=True, ckpt_path="x.ckpt")) == "x.ckpt"
    for name in ("last.ckpt", "last.calibrated.ckpt"):  # a calibrated copy is newer, never the training state
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    assert resolve_ckpt_path(cfg(resume=True)) == str(tmp_path / "checkpoints" / "last.ckpt")


# -- atomic outputs ------------------------------------------------------------------------------------

def test_a_crash_while_writing_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.9})
    before = target.read_bytes()
    for crash in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(crash)), atomic_open(target, "w") as f:
            f.write('{"auc": ')
            raise crash
    with pytest.raises(TypeError):
        write_json(target, {"auc": object()})  # not serialisable: fails before a byte is written
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sigkill_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.9})
    code = ("import os, signal, sys\nfrom lungcnn.fileio import atomic_open\n"
            "with atomic_open(sys.argv[1], 'w') as f:\n    f.write('{\"half\": ')\n    f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT).returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"auc": 0.9}
    # No cleanup runs under SIGKILL: the partial write stays in a hidden temp file beside the target.
    assert all(p.name.startswith(".metrics.json.") and p.suffix == ".tmp" for p in tmp_path.iterdir() if p != target)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("crash during torch.save")


def test_lightning_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="crash during torch.save"):
        io.save_checkpoint({"w": torch.zeros(3), "bad": _Unpicklable()}, path)
    assert torch.equal(io.load_checkpoint(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
