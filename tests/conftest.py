"""Shared fixtures: a tiny synthetic dataset and Hydra configs composed from conf/ as a user would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data" / "iqothnccd-dev"

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A small synthetic set: 4 benign and 6 malignant patients, 3 slices each, 64 px."""
    from lungcnn.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    return make_synthetic_dataset(root, n_patients={"benign": 4, "malignant": 6}, slices_per_patient=3,
                                  image_size=64, seed=0)


def make_cfg(run_dir: Path, overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *overrides])


def tiny_overrides(root: Path) -> list[str]:
    """Fast settings for tests: 64 px, small batches, a few epochs, no ImageNet download needed."""
    # The feature cache (frozen-backbone recipes) beside the data, never in the working tree.
    return [f"data.root={root}", "data.synthetic=false", "data.image_size=64", "data.batch_size=8",
            f"feature_cache.dir={Path(root).parent / 'feature_cache'}",
            "trainer.max_epochs=2", "callbacks.finetune.stage1_epochs=1", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="session")
def trained_ckpt(tiny_root, tmp_path_factory) -> Path:
    """One tiny two-stage training run shared by the calibrate / evaluate / predict / app tests."""
    from lungcnn.training.train import train

    run_dir = tmp_path_factory.mktemp("run")
    result = train(make_cfg(run_dir, tiny_overrides(tiny_root)))
    return Path(result["best_checkpoint"])


@pytest.fixture(scope="session")
def calibrated_ckpt(trained_ckpt, tmp_path_factory) -> Path:
    """The tiny run calibrated as the README says (temperature, threshold, domain guard)."""
    from lungcnn.calibration.fit import calibrate

    out = tmp_path_factory.mktemp("cal") / "cal.ckpt"
    calibrate(trained_ckpt, out)
    return out


def photo_png(size: tuple[int, int] = (96, 128)) -> bytes:
    """A colour 'photograph' drawn with Pillow: sky gradient, a sun, a house, a caption."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    h, w = size
    sky = np.zeros((h, w, 3), np.uint8)
    sky[..., 0] = np.linspace(60, 200, h)[:, None]
    sky[..., 1] = np.linspace(120, 230, h)[:, None]
    sky[..., 2] = 250
    im = Image.fromarray(sky)
    draw = ImageDraw.Draw(im)
    draw.ellipse((w - 40, 8, w - 10, 38), fill=(255, 210, 0))
    draw.rectangle((20, h // 2, 70, h - 5), fill=(170, 40, 30))
    draw.polygon([(15, h // 2), (45, h // 4), (75, h // 2)], fill=(90, 50, 20))
    draw.rectangle((0, h - 12, w, h), fill=(40, 160, 40))
    draw.text((5, 5), "holiday", fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
