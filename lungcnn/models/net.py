"""The network: backbone -> global average pooling -> dropout -> Linear(F, hidden) -> ReLU -> dropout
-> Linear(hidden, outputs); with hidden = 0 a linear head, dropout -> Linear(F, outputs). One output (a logit
for P(malignant)) for the binary task, K for K classes. With `standardize`, the head first standardises each
pooled feature by the training split's mean and standard deviation (`Standardize`, as scikit-learn's
StandardScaler before a logistic regression).
"""

from __future__ import annotations

import torch
from torch import nn

from lungcnn.errors import require_bool, require_int, require_number
from lungcnn.models.backbone import create_backbone


def check_head(hidden: int, dropout: float, standardize: bool = False) -> None:
    """The head's settings (model.hidden, model.dropout, model.standardize); `ClassifierHead` checks them on
    construction."""
    require_int("model.hidden", hidden, 0)
    require_number("model.dropout", dropout, 0, 1, low_open=False)
    require_bool("model.standardize", standardize)


class Standardize(nn.Module):
    """(N, F) features -> (x - mean) / scale per feature, with the training split's statistics (`fit`).

    Why: the head's weight decay then shrinks every feature's weight on one scale, as in a standardised
    logistic-regression probe, which carried better to CT sources never trained on than the unstandardised head
    (docs/results/sources.md). The statistics are buffers: they travel in the checkpoint and the ONNX graph.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """features: (N, F) pooled backbone features of the training split, N >= 2."""
        if features.ndim != 2 or features.shape[1] != len(self.mean) or len(features) < 2:
            raise ValueError(f"Standardize.fit needs (N >= 2, {len(self.mean)}) features, got {tuple(features.shape)}")
        features = features.to(self.mean.device, torch.float64)
        self.mean.copy_(features.mean(0))
        # A constant feature (std 0) is left unscaled rather than divided by zero.
        std = features.std(0)
        self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class ClassifierHead(nn.Sequential):
    def __init__(self, in_features: int, hidden: int = 128, dropout: float = 0.2, outputs: int = 1,
                 standardize: bool = False) -> None:
        check_head(hidden, dropout, standardize)
        first = [Standardize(in_features)] if standardize else []
        if hidden == 0:  # linear: a logistic regression on the pooled features
            super().__init__(*first, nn.Dropout(dropout), nn.Linear(in_features, outputs))
            return
        super().__init__(
            *first, nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, outputs),
        )

    @property
    def standardize(self) -> Standardize | None:
        return self[0] if isinstance(self[0], Standardize) else None


class LungNet(nn.Module):
    """Images (N, 3, S, S) -> logits (N,) for one output, (N, K) for K outputs."""

    def __init__(self, backbone: str = "mobilenetv2_100", outputs: int = 1, hidden: int = 128,
                 dropout: float = 0.2, pretrained: str = "imagenet", weights_file: str | None = None,
                 features: str = "head", standardize: bool = False) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, weights_file, features)
        self.head = ClassifierHead(self.backbone.num_features, hidden, dropout, outputs, standardize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_of(self.backbone(x))

    def logits_of(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, F) -> logits; the domain guard reads the same features, unstandardised."""
        logits = self.head(features)
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
