"""Training speed: images/s in stage 1 (frozen backbone) and stage 2 (top 30 layers unfrozen), the data
loader's images/s on its own, the peak RSS of each, and whether the loader keeps up (>= 3x training).

    python scripts/bench_train.py [--image-size 224] [--epochs 2] --out bench_train.json [hydra overrides...]

Everything is built the way `python -m lungcnn.train experiment=demo` builds it (Hydra compose of conf/,
lungcnn.train.build_datamodule / build_model, the TwoStageFinetune callback, the config's default loader
settings), on the synthetic demo set. Each phase runs in its own process so its peak RSS is its own.
Training images/s counts the time inside training steps (forward, backward, optimiser), after two
warm-up batches per epoch; the loader's images/s is one pass over the training loader with no model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("loader", "stage1", "stage2")
WARMUP_BATCHES = 2


def compose_cfg(run_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", "trainer.enable_progress_bar=false", *overrides])


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest child (loader workers), MiB (Linux: KiB units)."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_phase(phase: str, overrides: list[str], epochs: int) -> dict:
    import logging
    import warnings

    from lungcnn.training.callbacks.finetune import TwoStageFinetune
    from lungcnn.training.train import build_datamodule, build_model

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's tips and deprecation notes would bury the table
    run_dir = Path(tempfile.mkdtemp(prefix="lungcnn-bench-train-"))
    cfg = compose_cfg(run_dir, overrides)
    L.seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    start = time.perf_counter()
    datamodule.setup("fit")
    result: dict = {"phase": phase, "setup_s": time.perf_counter() - start, "image_size": cfg.data.image_size,
                    "batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
                    "train_images": int((datamodule.frame["split"] == "train").sum())}
    if phase == "loader":
        loader = datamodule.train_dataloader()
        images, seconds = 0, 0.0
        for _ in range(epochs):
            batches = iter(loader)
            next(batches)  # worker start-up and first batch excluded
            start = time.perf_counter()
            for x, _ in batches:
                images += len(x)
            seconds += time.perf_counter() - start
        result.update(images=images, seconds=seconds, images_per_s=images / seconds)
    else:
        model = build_model(cfg, datamodule)
        finetune = cfg.callbacks.finetune
        timer = StepTimer()
        callbacks = [TwoStageFinetune(stage1_epochs=epochs if phase == "stage1" else 0,
                                      unfreeze_top_n=finetune.unfreeze_top_n, lr_divisor=finetune.lr_divisor), timer]
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            deterministic=cfg.trainer.deterministic, default_root_dir=str(run_dir), callbacks=callbacks)
        trainer.fit(model, datamodule=datamodule)
        result.update(images=timer.images, seconds=timer.step_seconds, images_per_s=timer.images / timer.step_seconds,
                      loop_images_per_s=timer.images / timer.loop_seconds, trainable_params=timer.trainable)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


class StepTimer(L.Callback):
    """Time inside training steps (batch start -> end) and the whole loop, skipping warm-up batches per epoch."""

    def __init__(self) -> None:
        self.images, self.step_seconds, self.loop_seconds, self.trainable = 0, 0.0, 0.0, 0
        self._start = self._previous_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()
        self.trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end = time.perf_counter()
        if batch_idx >= WARMUP_BATCHES:
            self.images += len(batch[0])
            self.step_seconds += end - self._start
            self.loop_seconds += end - self._previous_end  # includes fetching this batch from the loader
        self._previous_end = end

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._previous_end = time.perf_counter()


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=None, help="default: the demo config's (128)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per phase (the demo train split: ~14 batches each)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=32 data.num_workers=2")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"data.image_size={args.image_size}"] if args.image_size else [])
    if args.phase:  # a child: one phase, result to a file
        Path(args.result).write_text(json.dumps(run_phase(args.phase, overrides, args.epochs)))
        return None

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in PHASES:
            out = Path(tmp) / f"{phase}.json"
            cmd = [sys.executable, __file__, "--phase", phase, "--result", str(out), "--epochs", str(args.epochs), *overrides]
            subprocess.run(cmd, check=True, cwd=ROOT)
            results[phase] = json.loads(out.read_text())
    loader = results["loader"]["images_per_s"]
    summary = {"results": results, "cores": os.cpu_count(), "load_average_end": os.getloadavg(),
               "loader_over_training": {s: loader / results[s]["images_per_s"] for s in ("stage1", "stage2")},
               "loader_keeps_up_3x": {s: loader >= 3 * results[s]["images_per_s"] for s in ("stage1", "stage2")}}
    print(table(summary))
    if args.out:
        from lungcnn.fileio import write_json

        write_json(args.out, summary)
    return summary


def table(summary: dict) -> str:
    r = summary["results"]
    first = r["loader"]
    lines = [f"training speed, demo config: {first['image_size']} px, batch {first['batch_size']}, "
             f"num_workers {first['num_workers']}, {first['train_images']} training images, {summary['cores']} cores "
             f"(load average at end {summary['load_average_end'][0]:.2f})",
             f"{'phase':<36}{'img/s':>9}{'peak RSS MiB':>14}{'trainable':>12}{'loader / it':>13}"]
    names = {"loader": "data loader alone (no model)", "stage1": "stage 1: frozen backbone",
             "stage2": "stage 2: top 30 layers unfrozen"}
    for phase, name in names.items():
        x = r[phase]
        ratio = f"{summary['loader_over_training'][phase]:.1f}x" if phase != "loader" else ""
        trainable = f"{x['trainable_params']:,}" if "trainable_params" in x else ""
        lines.append(f"{name:<36}{x['images_per_s']:>9.1f}{x['peak_rss_mib']['self']:>14.0f}{trainable:>12}{ratio:>13}")
    lines.append(f"loader >= 3x training: stage 1 {summary['loader_keeps_up_3x']['stage1']}, "
                 f"stage 2 {summary['loader_keeps_up_3x']['stage2']} (training img/s = time inside steps; "
                 f"decode cache built in setup: {first['setup_s']:.1f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
