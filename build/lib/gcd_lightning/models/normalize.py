"""Normalisation inside the model, so that every attack and defense works in pixel space [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"Normalize: mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images of shape (N, {self.mean.shape[1]}, H, W) in [0, 1], got {tuple(x.shape)}; "
                "check dataset.in_channels against the data"
            )
        return (x - self.mean) / self.std


def normalized(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """The protected classifier ``f``: pixels in [0, 1] -> logits (``Normalize`` then ``net``)."""
    return nn.Sequential(Normalize(mean, std), net)
