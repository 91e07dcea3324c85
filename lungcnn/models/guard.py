"""The applicability-domain guard's network part: k-nearest-neighbour distance on pooled backbone features.

A classifier's probabilities say nothing about images unlike its training images (an MR, a photograph, a
flat square all came out "malignant" at P ~ 0.999). The guard scores how far an image's pooled backbone
features lie from the training images' (Sun et al. 2022, "Out-of-distribution detection with deep nearest
neighbors"): features are L2-normalised, and the score is the Euclidean distance to the k-th nearest
training image (0 = identical direction, 2 = opposite). Measured here it separated new patients of the
training source from non-CT files far better than a Mahalanobis distance (README, "Knowing when not to
answer"). A standardising head's guard still measures the raw features: measured on the standardised ones, the
multi-source model's threshold rose above almost every non-CT file's score (docs/results/sources.md). The
reference bank is a buffer, so it lives in the checkpoint's state (`guard.bank`, loaded with weights_only) and is
traced into the ONNX graph with the network; the threshold lives in `spec.DomainGuard`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

PREFIX = "guard."


class KnnDistance(nn.Module):
    """Features (N, F) -> distance (N,) of each normalised feature vector to its k-th nearest bank vector.

    Args:
        bank: (M, F) reference features (normalised here), M >= k.
        k: which neighbour's distance is the score (1 = nearest).
    """

    def __init__(self, bank: torch.Tensor, k: int) -> None:
        super().__init__()
        if bank.ndim != 2 or not 1 <= k <= len(bank):
            raise ValueError(f"kNN guard needs a (M, F) bank with M >= k >= 1, got {tuple(bank.shape)} and k={k}")
        self.k = int(k)
        self.register_buffer("bank", F.normalize(bank.float(), dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(features.float(), dim=1) @ self.bank.T
        kth = torch.topk(similarity, self.k, dim=1).values[:, -1]
        return torch.sqrt(torch.clamp(2 - 2 * kth, min=0))  # |a - b| of unit vectors from their cosine


def guard_state(guard: KnnDistance) -> dict[str, torch.Tensor]:
    """The guard's tensors under the checkpoint's `guard.` keys (stored beside the network's weights)."""
    return {PREFIX + k: v.detach().cpu() for k, v in guard.state_dict().items()}


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint's state -> (the network's weights, the guard's tensors without their prefix)."""
    net = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    guard = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    return net, guard


@torch.inference_mode()
def pooled_features(net: nn.Module, batches) -> torch.Tensor:
    """Pooled backbone features (N, F) of normalised image batches (an iterable of (n, 3, S, S) arrays)."""
    net.eval()
    out = [net.backbone(torch.from_numpy(b)).float() for b in batches]
    return torch.cat(out) if out else torch.zeros((0, int(net.backbone.num_features)))


def guarded_forward(net: torch.nn.Module, guard: torch.nn.Module | None,
                    x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, domain scores or None) of a LungNet and its guard, from one pass through the backbone."""
    if guard is None:
        return net(x), None
    features = net.backbone(x)
    return net.logits_of(features), guard(features)
