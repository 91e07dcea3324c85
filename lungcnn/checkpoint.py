"""The one place that knows the checkpoint format.

A lungcnn checkpoint is a Lightning checkpoint (or a slim calibrated copy of one) with a
``"lungcnn"`` entry of plain Python types: class names, task, backbone and head, preprocessing,
temperature, threshold and calibration, data note and test metrics. Any consumer needs only the path.
Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, so a file crafted
to run code on load is refused instead of executed.
"""

from __future__ import annotations

import datetime as _dt
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import atomic_open

FORMAT = "lungcnn-checkpoint/1"
REQUIRED = ("task", "class_names", "backbone", "head", "preprocessing", "temperature", "threshold")
PREPROCESSING_KEYS = ("image_size", "mean", "std", "window")


def build_metadata(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata for a freshly trained model: T = 1 and threshold 0.5 until `lungcnn.calibrate` runs."""
    return {
        "format": FORMAT,
        "task": hparams["task"],
        "class_names": list(hparams["class_names"]),
        "backbone": hparams["backbone"],
        "head": {"hidden": hparams["hidden"], "dropout": hparams["dropout"]},
        "preprocessing": dict(hparams["preprocessing"] or {}),
        "temperature": 1.0,
        "threshold": 0.5,
        "calibration": {"method": "none"},
        "data": dict(hparams.get("data") or {}),
        "data_note": (hparams.get("data") or {}).get("note", ""),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, network state dict with LungNet key names) from a lungcnn checkpoint file."""
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
    meta = raw["lungcnn"]
    missing = [k for k in REQUIRED if k not in meta]
    if missing or meta.get("format") != FORMAT:
        raise LungCNNInputError(f"{path}: lungcnn checkpoint of another format ({meta.get('format')}); missing {missing}")
    missing = [k for k in PREPROCESSING_KEYS if k not in meta["preprocessing"]]
    if missing:
        raise LungCNNInputError(f"{path}: the checkpoint lacks preprocessing settings {missing}; refusing to guess")
    state = {k.removeprefix("net."): v for k, v in raw["state_dict"].items() if not k.startswith(("loss.", "val_", "test_"))}
    return meta, state


def build_network(meta: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The LungNet a checkpoint describes, with its weights, in eval mode."""
    from lungcnn.models.net import LungNet
    from lungcnn.models.tasks import get_task

    task = get_task(meta["task"], len(meta["class_names"]))
    net = LungNet(meta["backbone"], task.outputs(len(meta["class_names"])), meta["head"]["hidden"],
                  meta["head"]["dropout"], pretrained="none")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LungCNNInputError(f"checkpoint weights do not fit a {meta['backbone']} LungNet: {str(e)[:300]}") from None
    return net.eval()


def save_checkpoint(path: str | Path, meta: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """Write a slim checkpoint (metadata + network weights) atomically."""
    with atomic_open(path, "wb") as f:
        torch.save({"lungcnn": dict(meta), "state_dict": {f"net.{k}": v for k, v in state.items()}}, f)
