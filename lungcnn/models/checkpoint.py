"""Checkpoint files: a network's weights plus its `ModelSpec`, loaded safely.

A lungcnn checkpoint is a Lightning checkpoint (or a slim calibrated copy of one) with a ``"lungcnn"``
entry written by `ModelSpec.to_metadata()` (plain Python types). Any consumer needs only the path.
Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, so a file crafted
to run code on load is refused instead of executed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open
from lungcnn.models.guard import NOVELTY_PREFIX, PREFIX, KnnDistance, split_state, state_under
from lungcnn.spec import ModelSpec


def load_checkpoint(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """(spec, network state dict with LungNet key names) from a lungcnn checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise LungCNNInputError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LungCNNInputError(
            f"{path}: refused to load: the file holds Python objects beyond tensors and plain data "
            f"(unsafe to unpickle; it is not a lungcnn checkpoint). Detail: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # truncated zip, random bytes, a directory...
        raise LungCNNInputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or "lungcnn" not in raw or "state_dict" not in raw:
        raise LungCNNInputError(f"{path}: not a lungcnn checkpoint (no 'lungcnn' metadata); train one with "
                                "`python -m lungcnn.train`")
    spec = ModelSpec.from_metadata(raw["lungcnn"], source=str(path))
    state = {k.removeprefix("net."): v for k, v in raw["state_dict"].items() if not k.startswith(("loss.", "val_", "test_"))}
    return spec, state


def build_network(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The LungNet a spec describes, with its weights, in eval mode (the guard's tensors are left out)."""
    from lungcnn.models.net import LungNet

    net = LungNet(spec.network.backbone, spec.task.outputs, spec.network.hidden, spec.network.dropout, pretrained="none",
                  features=spec.network.features, standardize=spec.network.standardize)
    try:
        net.load_state_dict(split_state(state)[0], strict=True)
    except RuntimeError as e:
        raise LungCNNInputError(f"checkpoint weights do not fit a {spec.network.backbone} LungNet: {str(e)[:300]}") from None
    return net.eval()


def build_guard(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> torch.nn.Module | None:
    """The domain guard's scoring module (`KnnDistance`) a spec describes, or None when it has no guard."""
    return _knn(spec.guard, state, PREFIX, "domain guard")


def build_novelty(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> torch.nn.Module | None:
    """The novelty score's module (`KnnDistance` on standardised features) a spec describes, or None without one."""
    return _knn(spec.novelty, state, NOVELTY_PREFIX, "novelty bank")


def _knn(part: Any, state: Mapping[str, torch.Tensor], prefix: str, what: str) -> torch.nn.Module | None:
    if part is None:
        return None
    tensors = state_under(state, prefix)
    bank = tensors.get("bank")
    if bank is None or tuple(bank.shape) != (part.bank_size, part.feature_dim):
        raise LungCNNInputError(f"the checkpoint's {what} expects a ({part.bank_size}, {part.feature_dim}) "
                                f"reference bank, found {None if bank is None else tuple(bank.shape)}; re-run lungcnn.calibrate")
    return KnnDistance.from_state(tensors, part.k).eval()


def save_checkpoint(path: str | Path, spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> None:
    """Write a slim checkpoint (metadata + network weights) atomically."""
    with atomic_open(path, "wb") as f:
        torch.save({"lungcnn": spec.to_metadata(), "state_dict": {f"net.{k}": v for k, v in state.items()}}, f)
