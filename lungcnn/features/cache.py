"""On-disk cache of pooled backbone features: a frozen backbone runs once per image and view, not once per epoch.

Layout: ``ROOT/<weights key>/<preprocessing key>/<content key>.npy`` holds the evaluation view (no augmentation,
what validation, test and prediction see), one float32 array (1, F) per image file, and
``.../<preprocessing key>/views-<augmentation key>/<content key>.npy`` its augmented views (K, F), view v drawn
with a seed derived from the file's content key and v. The same image therefore gets the same views in every
fold, seed and run, asking for more views computes only the missing rows, and every recipe on the same pixels
(augmented or not, training or calibration) shares the evaluation views.

- weights key: sha256 of the backbone's state dict (names, dtypes, shapes and bytes, batch-norm running
  statistics included), so other weights never read these features;
- preprocessing key: sha256 of what decides the pixels (`pixel_settings`: size, window, crop, mean/std), plus
  `FORMAT`; training (`features.data`) and calibration/evaluation (`evaluation_features`) key it the same way,
  so a frozen-backbone run's calibrate and evaluate read what its training computed;
- augmentation key: sha256 of the augmentation pipeline (albumentations' own serialisation);
- content key: sha256 of the file's bytes and of its source's rendering (`lungcnn.data.rendering`; one source of
  several re-windows its 8-bit exports), so an edited or replaced file is a miss, whatever its name.

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
FORMAT = 2


def pixel_settings(image_size: int, mean: Sequence[float], std: Sequence[float], window: Any, crop: str) -> dict[str, Any]:
    """What decides a cached feature's input pixels, in one canonical form (plain floats) whoever asks: the
    training data module or a checkpoint's recorded preprocessing. The lung check and the padding rule are left
    out: the first does not change pixels, the second is fixed. A crop to the lungs carries the lung-field step's
    version: its boxes move when that step changes."""
    from lungcnn.data.lungcrop import VERSION

    return {"image_size": int(image_size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "window": {"level": float(window.level), "width": float(window.width)},
            "crop": str(crop) if crop == "none" else f"{crop}@lungcrop{VERSION}"}


def weights_key(backbone: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def preprocessing_key(preprocessing: dict[str, Any]) -> str:
    described = {"format": FORMAT, "preprocessing": preprocessing}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def augment_key(augment: Sequence[Any]) -> str:
    described = [_describe(t) for t in augment]
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def _describe(transform: Any) -> Any:
    # albumentations' serialisation lists every argument with its value, defaults included.
    to_dict = getattr(transform, "to_dict", None)
    return to_dict() if callable(to_dict) else repr(transform)


def content_key(path: str | Path, rendering: Any = None) -> str:
    """`rendering`: the file's source's `Rendering.describe()`, None for a file read as it is."""
    digest = hashlib.sha256(Path(path).read_bytes())
    if rendering is not None:
        digest.update(b"|rendering|" + json.dumps(rendering, sort_keys=True).encode())
    return digest.hexdigest()


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
        preprocessing: what the weights' inputs depend on (`pixel_settings`; the preprocessing key).
        augment: the augmentation pipeline of the augmented views (their own key, below the evaluation views').
    """

    def __init__(self, root: str | Path, backbone: nn.Module, extract: Callable[[torch.Tensor], torch.Tensor],
                 transform: Callable[[np.ndarray, int | None], torch.Tensor], preprocessing: dict[str, Any],
                 augment: Sequence[Any] = (), batch_size: int = 64) -> None:
        self.folder = Path(root) / weights_key(backbone) / preprocessing_key(preprocessing)
        self.views_folder = self.folder / f"views-{augment_key(augment)}" if augment else None
        self.backbone, self.extract, self.transform, self.batch_size = backbone, extract, transform, batch_size
        self.hits = self.misses = 0

    def features(self, files: Sequence[str | Path], images: np.ndarray, views: int = 0,
                 renderings: Sequence[Any] | None = None) -> np.ndarray:
        """(N, 1 + views, F) float32 features of `images` (decoded from `files`, in the same order; `renderings`:
        each file's source's rendering description, or None for files read as they are)."""
        if views and self.views_folder is None:
            raise ValueError("augmented views need the augmentation pipeline (FeatureCache(augment=...))")
        renderings = [None] * len(files) if renderings is None else renderings
        keys = [content_key(f, r) for f, r in zip(files, renderings, strict=True)]
        plain = [_read(self.folder, k) for k in keys]
        extra = [_read(self.views_folder, k) if views else None for k in keys]
        have = [0 if rows is None else len(rows) for rows in extra]
        missing = [i for i in range(len(keys)) if plain[i] is None or have[i] < views]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        # A chunk of images at a time, each entry written when computed: an interrupted run keeps its work.
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            todo = [(i, v) for i in chunk for v in ([0] if plain[i] is None else []) + list(range(1 + have[i], 1 + views))]
            computed = self._compute(images, todo, keys)
            for i in chunk:
                if plain[i] is None:
                    plain[i] = computed[i, 0][None]
                    _write(self.folder, keys[i], plain[i])
                if have[i] < views:
                    new = np.stack([computed[i, v] for v in range(1 + have[i], 1 + views)])
                    extra[i] = new if extra[i] is None else np.concatenate([extra[i], new])
                    _write(self.views_folder, keys[i], extra[i])
            log.info("feature cache %s: %d of %d missing images computed", self.folder, start + len(chunk), len(missing))
        rows = [p if not views else np.concatenate([p, e[:views]]) for p, e in zip(plain, extra, strict=True)]
        return np.stack(rows).astype(np.float32, copy=False)

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


def _read(folder: Path, key: str) -> np.ndarray | None:
    path = folder / f"{key}.npy"
    if not path.is_file():
        return None
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:  # truncated or foreign file: recompute it
        log.warning("feature cache: unreadable entry %s (%s); recomputing", path, e)
        return None
    return rows if rows.ndim == 2 and rows.dtype == np.float32 and len(rows) else None


def _write(folder: Path, key: str, rows: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    write_bytes(folder / f"{key}.npy", buffer.getvalue())


def evaluation_features(root: str | Path, net: nn.Module, preprocessing: Any, files: Sequence[str | Path],
                        images: np.ndarray, renderings: Sequence[Any] | None = None, batch_size: int = 64) -> np.ndarray:
    """(N, F) pooled features of the evaluation view of `images` (decoded from `files`, as `Predictor.load` gives
    them) by `net`'s backbone, from the cache at `root` (computed where missing). `preprocessing`: the
    checkpoint's (`spec.preprocessing`); `renderings`: per file, as `FeatureCache.features` takes them."""
    from lungcnn.data.transforms import build_transform

    p = preprocessing
    normalise = build_transform(p.mean, p.std)
    cache = FeatureCache(root, net.backbone, net.backbone, lambda image, _seed: normalise(image=image)["image"],
                         pixel_settings(p.image_size, p.mean, p.std, p.window, p.crop), (), batch_size)
    return cache.features(files, images, 0, renderings)[:, 0]
