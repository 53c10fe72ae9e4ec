"""Small bricks shared by the backbones (pure torch + timm, no registries)."""
from typing import List

import torch
from timm.layers import DropPath
from torch import nn


class Mlp(nn.Module):
    """Two-layer MLP ``fc1 -> GELU (exact) -> fc2`` on the last dimension.

    Args:
        in_features (int): Input and output channels.
        hidden_features (int): Hidden channels.
    """

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def build_drop_path(drop_prob: float) -> nn.Module:
    """``DropPath(p)`` or ``nn.Identity`` when ``p == 0`` (as the official
    models do, so state dicts and module trees match)."""
    return DropPath(drop_prob) if drop_prob > 0. else nn.Identity()


def drop_path_rates(drop_path_rate: float, depths: List[int]) -> List[float]:
    """Linear stochastic-depth schedule over all blocks."""
    return [
        float(r) for r in torch.linspace(0, drop_path_rate, sum(depths))
    ]
