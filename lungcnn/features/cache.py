"""On-disk cache of pooled backbone features: a frozen backbone runs once per image and view, not once per epoch.

Layout: ``ROOT/<weights key>/<preprocessing key>/<content key>.npy``, one float32 array (views, F) per image file.
Row 0 is the evaluation view (no augmentation, what validation, test and prediction see); rows 1..K are augmented
views, view v drawn with a seed derived from the file's content key and v. The same image therefore gets the same
views in every fold, seed and run, and asking for more views computes only the missing rows.

- weights key: sha256 of the backbone's state dict (names, dtypes, shapes and bytes, batch-norm running
  statistics included), so other weights never read these features;
- preprocessing key: sha256 of what the checkpoint records as preprocessing (size, window, crop, mean/std,
  padding) and of the augmentation pipeline (albumentations' own serialisation), plus `FORMAT`;
- content key: sha256 of the file's bytes, so an edited or replaced file is a miss, whatever its name.

A changed file, weight or preprocessing setting lands under another key: a stale entry is never read. Entries
are written atomically (`lungcnn.fileio`), so parallel jobs or a crash leave whole entries or none; an entry
that cannot be read is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lungcnn.fileio import write_bytes
from lungcnn.seeding import derive_seed

log = logging.getLogger(__name__)

# Bump when what an entry holds changes meaning (the image pipeline before `preprocessing`, the row layout).
FORMAT = 1


def weights_key(backbone: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def preprocessing_key(preprocessing: dict[str, Any], augment: Sequence[Any]) -> str:
    described = {"format": FORMAT, "preprocessing": preprocessing, "augment": [_describe(t) for t in augment]}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def _describe(transform: Any) -> Any:
    # albumentations' serialisation lists every argument with its value, defaults included.
    to_dict = getattr(transform, "to_dict", None)
    return to_dict() if callable(to_dict) else repr(transform)


def content_key(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Views(Dataset):
    """The (image, view) pairs still missing, as model inputs: view 0 untransformed, view v >= 1 augmented with
    a seed from the image's content key and v (`transform(image, seed)`)."""

    def __init__(self, images: np.ndarray, todo: list[tuple[int, int]], keys: list[str],
                 transform: Callable[[np.ndarray, int | None], torch.Tensor]) -> None:
        self.images, self.todo, self.keys, self.transform = images, todo, keys, transform

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, item: int) -> torch.Tensor:
        i, view = self.todo[item]
        seed = None if view == 0 else derive_seed(int(self.keys[i][:15], 16), view)
        return self.transform(self.images[i], seed)


class FeatureCache:
    """Pooled features of images by file content, for one backbone and one preprocessing.

    Args:
        root: the cache folder (shared by every backbone and preprocessing; each has its own sub-folder).
        backbone: the frozen backbone (its state dict gives the weights key).
        extract: (N, 3, S, S) model inputs -> (N, F) pooled features, as training computes them.
        transform: (image, seed) -> model input: seed None for the evaluation view, else an augmented view.
        preprocessing, augment: what the weights' inputs depend on (the preprocessing key).
    """

    def __init__(self, root: str | Path, backbone: nn.Module, extract: Callable[[torch.Tensor], torch.Tensor],
                 transform: Callable[[np.ndarray, int | None], torch.Tensor], preprocessing: dict[str, Any],
                 augment: Sequence[Any] = (), batch_size: int = 64) -> None:
        self.folder = Path(root) / weights_key(backbone) / preprocessing_key(preprocessing, augment)
        self.backbone, self.extract, self.transform, self.batch_size = backbone, extract, transform, batch_size
        self.hits = self.misses = 0

    def entry(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def features(self, files: Sequence[str | Path], images: np.ndarray, views: int = 0) -> np.ndarray:
        """(N, 1 + views, F) float32 features of `images` (decoded from `files`, in the same order)."""
        keys = [content_key(f) for f in files]
        stored = [self._read(k) for k in keys]
        missing = [i for i, rows in enumerate(stored) if rows is None or len(rows) < 1 + views]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        # A chunk of images at a time, each entry written when computed: an interrupted run keeps its work.
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            todo = [(i, v) for i in chunk for v in range(0 if stored[i] is None else len(stored[i]), 1 + views)]
            computed = self._compute(images, todo, keys)
            for i in chunk:
                first = 0 if stored[i] is None else len(stored[i])
                new = np.stack([computed[i, v] for v in range(first, 1 + views)])
                rows = stored[i] = new if stored[i] is None else np.concatenate([stored[i], new])
                buffer = io.BytesIO()
                np.save(buffer, rows, allow_pickle=False)
                write_bytes(self.entry(keys[i]), buffer.getvalue())
            log.info("feature cache %s: %d of %d missing images computed", self.folder, start + len(chunk), len(missing))
        return np.stack([rows[: 1 + views] for rows in stored]).astype(np.float32, copy=False)

    def _read(self, key: str) -> np.ndarray | None:
        path = self.entry(key)
        if not path.is_file():
            return None
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:  # truncated or foreign file: recompute it
            log.warning("feature cache: unreadable entry %s (%s); recomputing", path, e)
            return None
        return rows if rows.ndim == 2 and rows.dtype == np.float32 and len(rows) else None

    @torch.no_grad()
    def _compute(self, images: np.ndarray, todo: list[tuple[int, int]], keys: list[str]) -> dict[tuple[int, int], np.ndarray]:
        if not todo:
            return {}
        was_training = self.backbone.training
        self.backbone.eval()  # fixed batch-norm statistics, as the frozen backbone has in training
        try:
            loader = DataLoader(_Views(images, todo, keys, self.transform), batch_size=self.batch_size)
            out = torch.cat([self.extract(batch).float().cpu() for batch in loader]).numpy()
        finally:
            self.backbone.train(was_training)
        return {pair: out[n] for n, pair in enumerate(todo)}
