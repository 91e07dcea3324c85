"""Grad-CAM heat maps: which regions of the image drove the network's output.

Uses `pytorch_grad_cam` on the backbone's last spatial convolution (`conv_head` for timm's
MobileNetV2), found by running the network once and keeping the last Conv2d whose output still has
a spatial grid, so other timm backbones work too (MobileNetV3's `conv_head` runs after pooling and
is skipped).

Grad-CAM registers hooks, needs gradients, and fills `.grad`; doing that on the Predictor's shared
network would race with predictions running in other threads (Streamlit serves each session from
its own thread) and could leave it changed. So Grad-CAM runs on a private copy of the network, made
once per network (and again if its weights change), in eval mode, where only the target layer
requires grad: a checkpoint fine-tuned with a frozen backbone would otherwise give no gradient and
an empty map (pytorch-grad-cam#254). The Predictor's own network is never touched.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from lungcnn.inference.predictor import Predictor


@dataclass
class CamResult:
    """A heat map (S, S) float in [0, 1] and its overlay on the model's image (S, S, 3) uint8 RGB."""

    heatmap: np.ndarray
    overlay: np.ndarray
    layer: str
    target: str  # the class whose evidence is shown

    @property
    def empty(self) -> bool:
        """True when no region pushed the output towards `target` (Grad-CAM is all zero)."""
        return float(self.heatmap.max()) <= 0.0


class _AsColumn(nn.Module):
    """LungNet gives (N,) for one logit; pytorch_grad_cam's targets index a class axis, so give (N, 1)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.unsqueeze(-1) if out.ndim == 1 else out


class _Logit:
    """Target: one output column, negated to show evidence for the binary task's negative class."""

    def __init__(self, column: int, sign: float = 1.0) -> None:
        self.column, self.sign = column, sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output[..., self.column]


def target_layer_name(net: nn.Module, image_size: int) -> str:
    """Name (in `net.named_modules()`) of the last Conv2d, in execution order, with a spatial output."""
    names = {module: name for name, module in net.named_modules()}
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((names[m], tuple(o.shape))))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    spatial = [name for name, shape in seen if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not spatial:
        raise ValueError("the network has no convolution with a spatial output: Grad-CAM needs one")
    return spatial[-1]


# network -> (fingerprint, private copy, target layer name); one lock, as the copy's hooks are shared state.
_TWINS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module, str]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _fingerprint(net: nn.Module, image_size: int) -> tuple:
    """Changes when a weight or buffer is replaced or modified in place (torch bumps `_version`)."""
    tensors = [*net.parameters(), *net.buffers()]
    return image_size, tuple(id(t) for t in tensors), tuple(t._version for t in tensors)


def _twin(net: nn.Module, image_size: int) -> tuple[nn.Module, str]:
    """The private copy Grad-CAM works on, and its target layer's name (call with `_LOCK` held)."""
    stamp = _fingerprint(net, image_size)
    hit = _TWINS.get(net)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    twin = copy.deepcopy(net).eval()
    name = target_layer_name(twin, image_size)
    for p in twin.parameters():
        p.requires_grad_(False)
        p.grad = None
    for p in dict(twin.named_modules())[name].parameters():
        p.requires_grad_(True)
    _TWINS[net] = (stamp, twin, name)
    return twin, name


def gradcam(predictor: Predictor, image: np.ndarray, towards: str | None = None, image_weight: float = 0.55) -> CamResult:
    """Grad-CAM for one (S, S) uint8 image from `Predictor.load`.

    `towards` is a class name (default: the decided class); for a binary checkpoint hot areas are evidence
    for `towards` (the negated logit for the negative class).
    """
    size = predictor.image_size
    if image.shape != (size, size) or image.dtype != np.uint8:
        raise ValueError(f"expected a ({size}, {size}) uint8 image from Predictor.load, got {image.shape} {image.dtype}")
    tensor = predictor.to_tensor(image[None])
    names = predictor.class_names
    if towards is None:  # the decided class; for an image not judged (no lungs, out of domain) the most probable one
        prediction = predictor.predict_images(image[None], ["image"])[0]
        towards = prediction.decision if prediction.decision in names else max(prediction.probabilities,
                                                                                key=prediction.probabilities.get)
    if towards not in names:
        raise ValueError(f"unknown class {towards!r}; the checkpoint's classes are {names}")
    target = _Logit(*predictor.task.logit_target(towards))
    with _LOCK:
        net, layer_name = _twin(predictor.net, size)
        layer = dict(net.named_modules())[layer_name]
        cam = GradCAM(model=_AsColumn(net), target_layers=[layer])
        try:  # not `with`: GradCAM.__exit__ swallows IndexError and would hide a failure
            with torch.enable_grad():
                heatmap = cam(input_tensor=tensor, targets=[target])[0]
        finally:
            cam.activations_and_grads.release()
            net.zero_grad(set_to_none=True)
    heatmap = np.nan_to_num(heatmap.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(0.0, 1.0)
    rgb = np.repeat(image[..., None], 3, axis=-1)
    if heatmap.max() > 0:
        overlay = show_cam_on_image(rgb.astype(np.float32) / 255.0, heatmap, use_rgb=True, image_weight=image_weight)
    else:  # nothing to highlight: a uniform blue wash would only hide the image
        overlay = rgb
    return CamResult(heatmap, overlay, layer_name, towards)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of a heat map's mass inside `mask` (e.g. the lung fields, `lungcrop.find_lung_fields`): how much of
    the evidence the network drew from where a lesion can be. NaN for an all-zero map."""
    total = float(heatmap.sum())
    return float(heatmap[mask.astype(bool)].sum()) / total if total > 0 else float("nan")
