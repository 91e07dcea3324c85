"""The network: backbone -> global average pooling -> dropout -> Linear(F, hidden) -> ReLU -> dropout
-> Linear(hidden, outputs); with hidden = 0 a linear head, dropout -> Linear(F, outputs). One output (a logit
for P(malignant)) for the binary task, K for K classes.
"""

from __future__ import annotations

import torch
from torch import nn

from lungcnn.errors import require_int, require_number
from lungcnn.models.backbone import create_backbone


def check_head(hidden: int, dropout: float) -> None:
    """The head's settings (model.hidden, model.dropout); `ClassifierHead` checks them on construction."""
    require_int("model.hidden", hidden, 0)
    require_number("model.dropout", dropout, 0, 1, low_open=False)


class ClassifierHead(nn.Sequential):
    def __init__(self, in_features: int, hidden: int = 128, dropout: float = 0.2, outputs: int = 1) -> None:
        check_head(hidden, dropout)
        if hidden == 0:  # linear: a logistic regression on the pooled features
            super().__init__(nn.Dropout(dropout), nn.Linear(in_features, outputs))
            return
        super().__init__(
            nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, outputs),
        )


class LungNet(nn.Module):
    """Images (N, 3, S, S) -> logits (N,) for one output, (N, K) for K outputs."""

    def __init__(self, backbone: str = "mobilenetv2_100", outputs: int = 1, hidden: int = 128,
                 dropout: float = 0.2, pretrained: str = "imagenet", weights_file: str | None = None,
                 features: str = "head") -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, weights_file, features)
        self.head = ClassifierHead(self.backbone.num_features, hidden, dropout, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_of(self.backbone(x))

    def logits_of(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, F) -> logits; the domain guard reads the same features."""
        logits = self.head(features)
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
