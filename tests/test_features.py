"""The feature cache (hits, misses, invalidation) and heads trained on cached features."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lungcnn.errors import LungCNNInputError
from lungcnn.features.cache import FeatureCache
from lungcnn.features.data import wanted
from lungcnn.models.checkpoint import load_checkpoint
from lungcnn.training.train import train

from .conftest import make_cfg, tiny_overrides

PREPROCESSING = {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


class Counting(nn.Module):
    """A toy backbone that counts the images it sees."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.body(x)


def _transform(image: np.ndarray, seed: int | None) -> torch.Tensor:
    x = torch.from_numpy(image).float().div(255).expand(3, -1, -1).clone()
    if seed is not None:  # an "augmentation" that depends on the seed alone
        x += torch.from_numpy(np.random.default_rng(seed).normal(0, 0.1, x.shape)).float()
    return x


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    return paths


def _images(paths):
    return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths])


def _cache(root, backbone, preprocessing=PREPROCESSING, augment=("flip",)):
    return FeatureCache(root, backbone, backbone, _transform, preprocessing, augment, batch_size=2)


def test_cache_hits_and_misses(files, tmp_path):
    root, backbone = tmp_path / "cache", Counting()
    first = _cache(root, backbone).features(files, _images(files), views=2)
    assert first.shape == (5, 3, 4) and backbone.seen == 15
    assert not np.allclose(first[:, 0], first[:, 1]) and not np.allclose(first[:, 1], first[:, 2])
    cache = _cache(root, backbone)
    again = cache.features(files, _images(files), views=2)
    assert np.array_equal(again, first) and backbone.seen == 15 and (cache.hits, cache.misses) == (5, 0)
    # One more view: only the missing rows are computed, the stored ones are kept.
    cache = _cache(root, backbone)
    more = cache.features(files, _images(files), views=3)
    assert backbone.seen == 20 and np.array_equal(more[:, :3], first) and cache.misses == 5
    # Fewer views and the evaluation view alone are read, not computed.
    assert np.array_equal(_cache(root, backbone).features(files, _images(files), views=0), first[:, :1])
    assert backbone.seen == 20


def test_a_changed_file_weight_or_preprocessing_invalidates(files, tmp_path):
    root, backbone = tmp_path / "cache", Counting()
    base = _cache(root, backbone).features(files, _images(files), views=1)
    # A file's content changes under the same name: that file alone is a miss.
    cv2.imwrite(str(files[2]), np.full((16, 16), 7, np.uint8))
    cache = _cache(root, backbone)
    changed = cache.features(files, _images(files), views=1)
    assert (cache.hits, cache.misses) == (4, 1) and not np.allclose(changed[2], base[2])
    assert np.array_equal(changed[[0, 1, 3, 4]], base[[0, 1, 3, 4]])
    # Other weights (a batch-norm running statistic is enough), another preprocessing or augmentation: all miss.
    other = Counting()
    other.body[1].running_mean.fill_(0.5)
    variants = [_cache(root, other), _cache(root, backbone, {**PREPROCESSING, "image_size": 32}),
                _cache(root, backbone, augment=("flip", "rotate"))]
    for cache in variants:
        cache.features(files, _images(files), views=1)
        assert (cache.hits, cache.misses) == (0, 5)


def test_an_unreadable_entry_is_recomputed(files, tmp_path):
    root, backbone = tmp_path / "cache", Counting()
    cache = _cache(root, backbone)
    base = cache.features(files, _images(files), views=0)
    entry = next(cache.folder.glob("*.npy"))
    entry.write_bytes(b"not an array")
    cache = _cache(root, backbone)
    assert np.array_equal(cache.features(files, _images(files), views=0), base) and cache.misses == 1


def _run(tmp_path, tiny_root, name, *extra):
    overrides = ["experiment=iqothnccd", *tiny_overrides(tiny_root), "data.augment=[]", "trainer.max_epochs=3",
                 f"feature_cache.dir={tmp_path / 'cache'}", *extra]
    return train(make_cfg(tmp_path / name, overrides))


def test_a_head_trained_on_cached_features_equals_one_trained_on_images(tiny_root, tmp_path):
    from_images = _run(tmp_path, tiny_root, "images", "feature_cache.enabled=false")
    from_cache = _run(tmp_path, tiny_root, "cached")
    assert any((tmp_path / "cache").rglob("*.npy"))  # the second run did train on the cache
    assert from_cache["val"] == pytest.approx(from_images["val"], abs=1e-4)
    assert from_cache["test"] == pytest.approx(from_images["test"], abs=1e-4)
    spec_a, state_a = load_checkpoint(from_images["best_checkpoint"])
    spec_b, state_b = load_checkpoint(from_cache["best_checkpoint"])
    assert (spec_b.task, spec_b.network, spec_b.preprocessing) == (spec_a.task, spec_a.network, spec_a.preprocessing)
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # the head trained to the same weights; the frozen backbone is untouched
        torch.testing.assert_close(state_b[key], state_a[key], atol=1e-4, rtol=1e-4)


def test_which_recipes_use_the_cache(tmp_path):
    assert wanted(make_cfg(tmp_path, ["experiment=iqothnccd"]))
    assert not wanted(make_cfg(tmp_path, ["experiment=paper"]))  # the paper's stage 2 trains the backbone
    assert not wanted(make_cfg(tmp_path, ["experiment=iqothnccd", "feature_cache.enabled=false"]))
    with pytest.raises(LungCNNInputError, match="feature_cache.enabled=true needs a backbone frozen"):
        wanted(make_cfg(tmp_path, ["experiment=paper", "feature_cache.enabled=true"]))
    with pytest.raises(LungCNNInputError, match="feature_cache.views"):
        wanted(make_cfg(tmp_path, ["experiment=iqothnccd", "feature_cache.views=-1"]))


def test_a_linear_head_round_trips_through_a_checkpoint(tmp_path, tiny_root):
    """model.hidden=0: a linear head (what the recipe comparison measured), saved and rebuilt like any other."""
    from lungcnn.models.checkpoint import build_network

    result = _run(tmp_path, tiny_root, "linear", "model.hidden=0", "trainer.max_epochs=1")
    spec, state = load_checkpoint(result["best_checkpoint"])
    head = {k: v.shape for k, v in state.items() if k.startswith("head.")}
    assert spec.network.hidden == 0 and list(head.values()) == [(1, 1280), (1,)], head
    assert build_network(spec, state)(torch.zeros(2, 3, 64, 64)).shape == (2,)


def test_the_last_block_s_features_round_trip_through_a_checkpoint(tmp_path, tiny_root):
    """model.features=blocks: the head reads the last block's 320 pooled features (no ImageNet 1x1 head), on the
    cache; the checkpoint rebuilds that network, and its features are not those of model.features=head."""
    from lungcnn.models.checkpoint import build_network

    result = _run(tmp_path, tiny_root, "blocks", "model.features=blocks", "trainer.max_epochs=1")
    spec, state = load_checkpoint(result["best_checkpoint"])
    assert spec.network.features == "blocks"
    assert state["head.1.weight"].shape == (128, 320) and not any(k.startswith("backbone.conv_head") for k in state)
    assert build_network(spec, state)(torch.zeros(2, 3, 64, 64)).shape == (2,)


def test_standardize_fits_the_training_statistics():
    from lungcnn.models.net import Standardize

    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    scaler = Standardize(3)
    assert not scaler.fitted and torch.equal(scaler(x), x)  # identity until fitted
    scaler.fit(x)
    out = scaler(x)
    torch.testing.assert_close(out[:, [0, 2]].mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, [0, 2]].std(0), torch.ones(2))
    assert torch.equal(out[:, 1], torch.zeros(3))  # a constant feature is centred, not divided by zero
    with pytest.raises(ValueError, match="Standardize.fit"):
        scaler.fit(torch.zeros(5, 4))


def test_a_standardized_head_is_fitted_on_the_training_split_with_or_without_the_cache(tiny_root, tmp_path):
    """model.standardize=true: the head's statistics are the training split's features' (unaugmented), the same
    whether the head trains on images (computed from them when training starts) or on cached features (read from
    the cache), kept in the checkpoint and used when it is rebuilt."""
    from lungcnn.models.checkpoint import build_network
    from lungcnn.models.net import Standardize

    extra = ("model.standardize=true", "model.hidden=0", "trainer.max_epochs=1")
    from_images = _run(tmp_path, tiny_root, "images", "feature_cache.enabled=false", *extra)
    from_cache = _run(tmp_path, tiny_root, "cached", *extra)
    spec_a, state_a = load_checkpoint(from_images["best_checkpoint"])
    spec_b, state_b = load_checkpoint(from_cache["best_checkpoint"])
    assert spec_a.network.standardize and spec_b.network.standardize
    for key in ("head.0.mean", "head.0.scale", "head.2.weight"):
        torch.testing.assert_close(state_b[key], state_a[key], atol=1e-4, rtol=1e-4)
    assert bool(state_a["head.0.fitted"]) and state_a["head.0.scale"].ne(1).any()
    net = build_network(spec_a, state_a)
    assert isinstance(net.head[0], Standardize) and net(torch.zeros(2, 3, 64, 64)).shape == (2,)
    # An older checkpoint's spec (no such setting) rebuilds the plain head.
    assert not type(spec_a.network)(spec_a.network.backbone).standardize


def test_a_lung_crop_is_keyed_by_the_lung_field_step_s_version(monkeypatch):
    """Cached features of lung-cropped images are stale once the lung-field step finds other boxes."""
    from lungcnn.data import lungcrop
    from lungcnn.data.io import LungWindow
    from lungcnn.features.cache import pixel_settings, preprocessing_key

    def key(crop: str) -> str:
        return preprocessing_key(pixel_settings(224, [0.5] * 3, [0.25] * 3, LungWindow(50, 400), crop))

    whole, cropped = key("none"), key("lungs")
    monkeypatch.setattr(lungcrop, "VERSION", lungcrop.VERSION + 1)
    assert key("none") == whole and key("lungs") != cropped
