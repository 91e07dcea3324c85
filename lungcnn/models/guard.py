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

The same module, standardising first, scores novelty (`spec.Novelty`, state `novelty.*`): the distance to the nearest
*normal* training slice, which ranks a series' slices (docs/lesion.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

PREFIX = "guard."
NOVELTY_PREFIX = "novelty."


class KnnDistance(nn.Module):
    """Features (N, F) -> distance (N,) of each normalised feature vector to its k-th nearest bank vector.

    Args:
        bank: (M, F) reference features (standardised and normalised here), M >= k.
        k: which neighbour's distance is the score (1 = nearest).
        mean, scale: (F,) standardisation applied to bank and queries before normalising, or None (raw features).
    """

    def __init__(self, bank: torch.Tensor, k: int, mean: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        super().__init__()
        if bank.ndim != 2 or not 1 <= k <= len(bank):
            raise ValueError(f"kNN guard needs a (M, F) bank with M >= k >= 1, got {tuple(bank.shape)} and k={k}")
        if (mean is None) != (scale is None) or (mean is not None and not mean.shape == scale.shape == bank.shape[1:]):
            raise ValueError("kNN standardisation needs both mean and scale, each (F,)")
        self.k = int(k)
        self.register_buffer("mean", None if mean is None else mean.float())
        self.register_buffer("scale", None if scale is None else scale.float())
        self.register_buffer("bank", F.normalize(self._standardise(bank.float()), dim=1))

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], k: int) -> KnnDistance:
        """The module `state_dict()` came from: its bank is stored standardised and normalised already (normalising
        again changes nothing), so the standardisation is set after it."""
        module = cls(state["bank"], k)
        if state.get("mean") is not None:
            module.mean, module.scale = state["mean"].float(), state["scale"].float()
        return module

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else (x - self.mean) / self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(self._standardise(features.float()), dim=1) @ self.bank.T
        kth = torch.topk(similarity, self.k, dim=1).values[:, -1]
        return torch.sqrt(torch.clamp(2 - 2 * kth, min=0))  # |a - b| of unit vectors from their cosine


def guard_state(guard: KnnDistance, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """A kNN module's tensors under the checkpoint's `guard.` (or `novelty.`) keys, beside the network's weights."""
    return {prefix + k: v.detach().cpu() for k, v in guard.state_dict().items()}


def state_under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's state under `prefix` (`PREFIX`, `NOVELTY_PREFIX`), without it."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ...]:
    """A checkpoint's state -> (the network's weights, the guard's tensors, the novelty bank's; without prefixes)."""
    net = {k: v for k, v in state.items() if not k.startswith((PREFIX, NOVELTY_PREFIX))}
    return net, state_under(state, PREFIX), state_under(state, NOVELTY_PREFIX)


@torch.inference_mode()
def pooled_features(net: nn.Module, batches) -> torch.Tensor:
    """Pooled backbone features (N, F) of normalised image batches (an iterable of (n, 3, S, S) arrays)."""
    net.eval()
    out = [net.backbone(torch.from_numpy(b)).float() for b in batches]
    return torch.cat(out) if out else torch.zeros((0, int(net.backbone.num_features)))


def guarded_forward(net: torch.nn.Module, guard: torch.nn.Module | None, x: torch.Tensor,
                    novelty: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(logits, domain scores or None, novelty or None) of a LungNet, its guard and its novelty bank, from one pass
    through the backbone."""
    if guard is None and novelty is None:
        return net(x), None, None
    features = net.backbone(x)
    return (net.logits_of(features), None if guard is None else guard(features),
            None if novelty is None else novelty(features))
