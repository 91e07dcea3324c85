"""Training on cached features: the image data module's splits as pooled backbone features.

Where the backbone stays frozen for a whole run, every epoch would run it over every image again for the
same numbers. `FeatureDataModule` serves the features of `FeatureCache` instead, through the image data
module's own training loader (`LungCTDataModule.training_loader`: the same sampler, the same batches, the
same per-draw seeds), and `LungClassifier.forward` sends (N, F) features straight to the head. The model,
its loss, metrics, checkpoints and callbacks are those of the image path, so the checkpoint is a normal
lungcnn checkpoint (backbone included) that calibrate, evaluate and predict read from images.

With augmentation, each image has K augmented views computed once (`feature_cache.views`); a training draw
takes view 1 + (its augmentation seed mod K), so epochs see different views. Without augmentation the
inputs are those of the image path, and so is the trained model (tests/test_features.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from lungcnn.data.datamodule import LungCTDataModule
from lungcnn.errors import LungCNNInputError, fail, require_int
from lungcnn.features.cache import FeatureCache, pixel_settings

ENABLED = ("auto", True, False)


class CachedFeatures(Dataset):
    """(N, 1 + K, F) features: an `(index, seed)` training draw takes augmented view 1 + seed % K (view 0 when
    K = 0); a plain index (validation, test) the evaluation view 0."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        view = 0
        if isinstance(item, tuple):
            item, seed = item
            augmented = self.features.shape[1] - 1
            view = 1 + seed % augmented if augmented else 0
        return self.features[item, view], int(self.labels[item])


class FeatureDataModule(L.LightningDataModule):
    """A set-up `LungCTDataModule` whose images are replaced by their cached features (N, 1 + K, F)."""

    def __init__(self, images: LungCTDataModule, features: np.ndarray) -> None:
        super().__init__()
        if images.frame is None or len(features) != len(images.frame):
            raise ValueError("features must be given for every image of a set-up data module, in its order")
        self.images, self.features = images, torch.from_numpy(features)
        # What lungcnn.train reads from its data module after fitting.
        self.frame, self.skipped, self.data_note = images.frame, images.skipped, images.data_note

    def _subset(self, split: str) -> tuple[torch.Tensor, np.ndarray]:
        mask = (self.frame["split"] == split).to_numpy()
        return self.features[torch.from_numpy(np.flatnonzero(mask))], self.frame["label"].to_numpy()[mask]

    # Features sit in memory: loader worker processes would only add start-up and copying.
    def train_dataloader(self) -> DataLoader:
        features, labels = self._subset("train")
        return self.images.training_loader(CachedFeatures(features, labels), labels, self.trainer, workers=0)

    def training_features_loader(self) -> DataLoader:
        return self.images._loader(CachedFeatures(*self._subset("train")), workers=0)

    def val_dataloader(self) -> DataLoader:
        return self.images._loader(CachedFeatures(*self._subset("val")), workers=0)

    def test_dataloader(self) -> DataLoader:
        return self.images._loader(CachedFeatures(*self._subset("test")), workers=0)


def wanted(cfg: DictConfig) -> bool:
    """Whether this training config trains on cached features (`feature_cache.*`), checked before any image is read.

    `enabled: auto` caches whenever the backbone is frozen for the whole run: `callbacks.finetune` unfreezes
    no layer, or not before `trainer.max_epochs`. `true` insists (and refuses a recipe that trains the backbone).
    """
    settings = cfg.get("feature_cache") or {}
    enabled = settings.get("enabled", False)
    if enabled not in ENABLED or not isinstance(enabled, (str, bool)):
        fail("feature_cache.enabled", "auto, true or false", enabled)
    require_int("feature_cache.views", settings.get("views", 0), 0)
    if enabled is False:
        return False
    finetune = (cfg.get("callbacks") or {}).get("finetune")
    max_epochs = cfg.trainer.get("max_epochs")
    frozen = finetune is not None and (
        finetune.unfreeze_top_n == 0 or (isinstance(max_epochs, int) and 0 <= max_epochs <= finetune.stage1_epochs))
    if enabled is True and not frozen:
        raise LungCNNInputError("feature_cache.enabled=true needs a backbone frozen for the whole run "
                                "(callbacks.finetune.unfreeze_top_n=0); use enabled=auto or false")
    return frozen


def feature_datamodule(cfg: DictConfig, images: LungCTDataModule, model: L.LightningModule) -> FeatureDataModule:
    """The set-up `images` as cached features of `model`'s backbone (computed where the cache has none)."""
    def transform(image: np.ndarray, seed: int | None) -> torch.Tensor:
        if seed is None:
            return images.eval_transform(image=image)["image"]
        images.train_transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return images.train_transform(image=image)["image"]

    settings: Any = cfg.feature_cache
    located = [images.locate(f) for f in images.frame["file"]]
    pixels = pixel_settings(images.image_size, images.mean, images.std, images.window, images.crop)
    cache = FeatureCache(settings.dir, model.net.backbone, model.features, transform, pixels,
                         images.augment, batch_size=images.batch_size)
    views = int(settings.views) if images.augment else 0
    files = [path for path, _ in located]
    # A file's pixels depend on its source's rendering too: part of its key.
    renderings = [None if r is None else r.describe() for _, r in located]
    return FeatureDataModule(images, cache.features(files, images.images, views, renderings))


def run_cache_dir(run_dir: str | Path) -> Path | None:
    """The feature cache a finished training run trained its frozen backbone's head on (its saved Hydra config),
    so that calibrating and evaluating its checkpoint read those features; None where it trained on images."""
    from omegaconf import OmegaConf

    config = Path(run_dir) / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    cfg = OmegaConf.load(config)
    return Path(cfg.feature_cache.dir) if "feature_cache" in cfg and wanted(cfg) else None
