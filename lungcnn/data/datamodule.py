"""LightningDataModule for a folder-per-class CT dataset, or several of them (`data.sources`).

setup(): scan the folder -> split (or reuse `split_file`) -> decode every image once into an
in-memory uint8 cache of shape (N, S, S) -> sampler weights from the training split. Epochs after
the first never touch a JPEG again, and an unreadable image is reported and skipped before any
training starts.

With `data.sources` (lungcnn.data.sources) every source is scanned with its own class map and groups, read
in its own rendering into the model's window (`data.window`, lungcnn.data.rendering), and the frame carries a
`source` column (in split.csv too). `data.holdout_source=NAME` makes that source the whole test split and splits
the others into train and val: leave-one-source-out (lungcnn.evaluation.by_source).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lungcnn.data.catalog import check_class_map, scan_folder
from lungcnn.data.io import LungWindow
from lungcnn.data.sources import Source, parse_sources, scan_sources
from lungcnn.data.splits import assign_splits, check_split_args, load_split, save_split
from lungcnn.data.transforms import build_transform, check_model_input, load_for_model
from lungcnn.errors import LungCNNInputError, fail, require_bool, require_choice, require_int
from lungcnn.seeding import derive_seed

log = logging.getLogger(__name__)

IMBALANCE = ("sampler", "loss", "none")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CachedImages(Dataset):
    """(S, S) uint8 images held in memory, transformed per item into ((3, S, S) float, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i = item
        if isinstance(item, tuple):  # (index, augmentation seed) from EpochSampler
            i, seed = item
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


class EpochSampler(Sampler[tuple[int, int]]):
    """An epoch's (index, augmentation seed) draws as a function of (seed, epoch) alone.

    Weighted draws with replacement when `weights` is given (the imbalance sampler), else a permutation.
    Lightning calls `set_epoch` at each epoch start (as for a DistributedSampler), so a run resumed from a
    checkpoint sees exactly the batches and augmentations of an uninterrupted one, with any number of
    workers. Without `set_epoch` (a plain loop, Lightning's DDP wrapper) each pass moves to the next epoch.
    """

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None, epoch: int = 0) -> None:
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        self.epoch += 1
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=generator)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


class LungCTDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str | None,
        class_folders: dict[str, str],
        class_names: Sequence[str],
        normal_as: str = "drop",
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        grouped: bool = True,
        n_folds: int | None = None,
        fold: int | None = None,
        split_file: str | None = None,
        imbalance: str = "sampler",
        augment: Sequence[A.BasicTransform] = (),
        window: dict[str, float] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        output_dir: str | None = None,
        synthetic: bool | dict[str, Any] = False,
        crop: str = "none",
        lung_check: bool = False,
        sources: Sequence[Mapping[str, Any]] | None = None,
        holdout_source: str | None = None,
    ) -> None:
        super().__init__()
        # Every argument is checked here, by the data module or the function it passes it to, before any file is read.
        check_class_map(class_folders, class_names, normal_as)
        check_model_input(image_size, crop)
        check_split_args(val_fraction, test_fraction, n_folds, fold, grouped)
        require_int("data.batch_size", batch_size, 1)
        require_int("data.num_workers", num_workers, 0)
        require_choice("data.imbalance", imbalance, IMBALANCE)
        if not isinstance(synthetic, (bool, Mapping)):
            fail("data.synthetic", "true, false or a mapping of make_synthetic_dataset arguments", synthetic)
        self.sources: list[Source] | None = None
        if sources:
            if synthetic:
                raise LungCNNInputError("data.synthetic makes one folder: use data.root, not data.sources")
            self.sources = parse_sources(sources, class_folders)
        elif not root:
            raise LungCNNInputError("data.root is not set: pass data.root=FOLDER (or a list data.sources)")
        names = [s.name for s in self.sources or []]
        if holdout_source is not None and holdout_source not in names:
            raise LungCNNInputError(f"data.holdout_source must name one of data.sources {names}, got {holdout_source!r}")
        self.holdout_source = holdout_source
        self.root = Path(root) if root else None
        self.class_folders, self.class_names = dict(class_folders), list(class_names)
        self.normal_as, self.image_size = normal_as, image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.split_args = dict(val_fraction=val_fraction, test_fraction=test_fraction, grouped=grouped,
                               n_folds=n_folds, fold=fold, seed=seed)
        if holdout_source is not None and n_folds is not None:
            raise LungCNNInputError("data.holdout_source makes its source the test split: leave data.n_folds unset")
        self.split_file, self.imbalance, self.seed = split_file, imbalance, seed
        self.window = LungWindow(**(window or {}))
        self.mean = IMAGENET_MEAN if mean is None else tuple(mean)
        self.std = IMAGENET_STD if std is None else tuple(std)
        # An entry may be a list of transforms (lungcnn.data.rendering.rendering_augment gives one): spliced in.
        augment = [t for entry in augment for t in (entry if isinstance(entry, list) else [entry])]
        self.augment = tuple(augment)
        self.train_transform = build_transform(self.mean, self.std, augment, seed=seed)
        self.eval_transform = build_transform(self.mean, self.std)
        self.output_dir, self.synthetic, self.crop = output_dir, synthetic, crop
        self.lung_check = require_bool("data.lung_check", lung_check)
        self.frame: pd.DataFrame | None = None
        self.images: np.ndarray | None = None
        self.skipped: list[str] = []

    # -- setup -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Make the synthetic demo set if asked; check the folder early, before any training starts."""
        if self.synthetic:
            from lungcnn.data.synthetic import make_synthetic_dataset

            make_synthetic_dataset(self.root, **(self.synthetic if isinstance(self.synthetic, dict) else {}))
        self._scan()

    def setup(self, stage: str | None = None) -> None:
        if self.frame is not None:
            return
        frame = self._scan()
        if self.split_file:
            frame["split"] = load_split(self.split_file, frame)
        elif self.holdout_source is not None:
            frame["split"] = holdout_split(frame, self.holdout_source, **self.split_args)
        else:
            frame["split"] = assign_splits(frame, **self.split_args)
        frame, self.images = self._decode(frame)
        self.frame = frame.reset_index(drop=True)
        if self.output_dir:
            save_split(self.frame, Path(self.output_dir) / "split.csv")
        counts = self.frame.groupby(["split", "class_name"]).size().unstack(fill_value=0)
        log.info("split (images per class):\n%s", counts.to_string())

    def _scan(self) -> pd.DataFrame:
        if self.sources:
            return scan_sources(self.sources, self.class_names, self.normal_as)
        return scan_folder(self.root, self.class_folders, self.class_names, self.normal_as)

    def locate(self, file: str) -> tuple[Path, Any]:
        """A `file` of the table -> (its path on disk, its source's rendering; None for a single data.root)."""
        if not self.sources:
            return self.root / file, None
        name, _, rest = file.partition("/")
        source = next(s for s in self.sources if s.name == name)
        return source.root / rest, source.rendering

    def _load(self, file: str) -> np.ndarray:
        path, rendering = self.locate(file)
        return load_for_model(path, self.image_size, self.window, name=None if rendering is None else file,
                              crop=self.crop, rendering=rendering)

    def _decode(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        keep, images = [], []
        for i, file in enumerate(frame["file"]):
            try:
                images.append(self._load(file))
                keep.append(i)
            except LungCNNInputError as e:
                self.skipped.append(str(e))
                log.warning("skipped unreadable image: %s", e)
        if not images:
            raise LungCNNInputError(f"{self.root or 'data.sources'}: none of the {len(frame)} images could be read")
        frame = frame.iloc[keep]
        for name in ("train", "val", "test"):
            if not (frame["split"] == name).any():
                raise LungCNNInputError(f"the {name} split has no readable images")
        return frame, np.stack(images)

    # -- data --------------------------------------------------------------------------------------
    def _subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = (self.frame["split"] == split).to_numpy()
        return self.images[mask], self.frame["label"].to_numpy()[mask]

    def split_frame(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def class_counts(self, split: str = "train") -> np.ndarray:
        labels = self._subset(split)[1]
        return np.bincount(labels, minlength=len(self.class_names))

    def pos_weight(self) -> float | None:
        """negatives / positives on the training split, for `BCEWithLogitsLoss(pos_weight=...)`."""
        if self.imbalance != "loss":
            return None
        counts = self.class_counts()
        return float(counts[:-1].sum() / max(counts[-1], 1))

    def class_weights(self) -> list[float] | None:
        """Inverse class frequency (mean 1) on the training split, for K-class cross-entropy."""
        if self.imbalance != "loss":
            return None
        counts = self.class_counts().astype(float)
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
        return weights.tolist()

    def train_dataloader(self) -> DataLoader:
        images, labels = self._subset("train")
        return self.training_loader(CachedImages(images, labels, self.train_transform), labels, self.trainer)

    def training_loader(self, dataset: Dataset, labels: np.ndarray, trainer: L.Trainer | None,
                        workers: int | None = None) -> DataLoader:
        """The training split's loader over `dataset` (items `(index, augmentation seed)` from `EpochSampler`);
        the feature cache's data module (`lungcnn.features`) draws the same batches through it."""
        weights = None
        if self.imbalance == "sampler" and self.sources:
            weights = torch.as_tensor(source_weights(self.split_frame("train"), self.sources), dtype=torch.double)
        elif self.imbalance == "sampler":
            counts = np.bincount(labels, minlength=len(self.class_names))
            weights = torch.as_tensor((1.0 / np.maximum(counts, 1))[labels], dtype=torch.double)
        # The epoch about to start (a resumed run's too): worker processes fetch before `set_epoch` is called.
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        sampler = EpochSampler(len(labels), self.seed, weights, epoch)
        return self._loader(dataset, workers, sampler=sampler, generator=torch.Generator().manual_seed(self.seed),
                            drop_last=len(labels) > self.batch_size)

    def training_features_loader(self) -> DataLoader:
        """The training split unaugmented, in file order: what the head's standardisation is fitted on."""
        images, labels = self._subset("train")
        return self._loader(CachedImages(images, labels, self.eval_transform))

    def val_dataloader(self) -> DataLoader:
        return self._loader(CachedImages(*self._subset("val"), self.eval_transform))

    def test_dataloader(self) -> DataLoader:
        return self._loader(CachedImages(*self._subset("test"), self.eval_transform))

    def _loader(self, dataset: Dataset, workers: int | None = None, **kwargs: Any) -> DataLoader:
        workers = self.num_workers if workers is None else workers
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def data_note(self) -> str:
        """What the model was trained on, for checkpoints, reports and the app's model card."""
        if self.sources:
            return "images from " + ", ".join(s.name for s in self.sources)
        if self.synthetic or (self.root / "SYNTHETIC.txt").is_file():
            return "synthetic demo data (drawn phantoms, not medical images)"
        return f"images from {self.root.name}"

    def describe(self) -> dict[str, Any]:
        """Where the data and its split live, so calibrate/evaluate can find the same val/test images."""
        split_file = Path(self.output_dir) / "split.csv" if self.output_dir else self.split_file
        described = {
            "root": str(self.root.resolve()) if self.root else None,
            "class_folders": self.class_folders,
            "normal_as": self.normal_as,
            "split_file": str(Path(split_file).resolve()) if split_file else None,
            "note": self.data_note(),
            "imbalance": self.imbalance,
            "train_class_counts": self.class_counts("train").tolist() if self.frame is not None else None,
        }
        if self.sources:
            described.update(sources=[s.describe() for s in self.sources], holdout_source=self.holdout_source)
        return described

    def preprocessing(self) -> dict[str, Any]:
        """What a checkpoint needs to see new images exactly as training saw them (plain types)."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "window": {"level": self.window.level, "width": self.window.width},
            "crop": self.crop,
            "lung_check": self.lung_check,
            "pad": "square, value 0",
        }


def holdout_split(frame: pd.DataFrame, holdout: str, **split_args: Any) -> pd.Series:
    """Leave one source out: every image of `holdout` is test; the other sources split into train and val
    (grouped within each source, stratified by label, `data.val_fraction` of them val). A source with fewer
    groups than 1 / val_fraction (LUNA16's two patients) cannot spare a share for validation, only a whole
    patient of few: it trains whole (with a 2-patient source, validation took one of them, half of its slices)."""
    split = pd.Series("test", index=frame.index, name="split")
    rest = frame[frame["source"] != holdout]
    if rest.empty:
        raise LungCNNInputError(f"data.holdout_source={holdout}: no other source is left to train on")
    val_fraction = split_args["val_fraction"]
    per_source = rest.groupby("source")
    n_groups = per_source["group"].transform("nunique") if split_args["grouped"] else per_source["file"].transform("size")
    few = n_groups < 1 / val_fraction
    split[rest.index[few.to_numpy()]] = "train"
    rest = rest[~few.to_numpy()]
    if rest.empty:
        raise LungCNNInputError(f"data.holdout_source={holdout}: every other source has fewer than 1 / data.val_fraction "
                                f"= {1 / val_fraction:g} groups, none can spare a validation split")
    # assign_splits' own test fold becomes val here; its val fold (a tiny share) goes back to training.
    inner = assign_splits(rest, val_fraction=min(val_fraction, 0.5), test_fraction=val_fraction,
                          seed=split_args["seed"], grouped=split_args["grouped"])
    split[rest.index] = inner.map({"train": "train", "val": "train", "test": "val"})
    return split


def source_weights(frame: pd.DataFrame, sources: Sequence[Source]) -> np.ndarray:
    """Sampler weight per training image: each source draws in proportion to its `weight`, and within a source
    each of its classes equally (a source with one class, such as normal scans, gives all its draws to it)."""
    weight = {s.name: s.weight for s in sources}
    cell = frame.groupby(["source", "label"])["file"].transform("size").to_numpy(dtype=float)
    n_classes = frame.groupby("source")["label"].transform("nunique").to_numpy(dtype=float)
    return frame["source"].map(weight).to_numpy(dtype=float) / (cell * n_classes)
