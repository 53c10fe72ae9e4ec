"""Small bricks shared by the backbones (pure torch + timm, no registries)."""
import contextlib
from typing import Iterator, List, Optional

import torch
from timm.layers import DropPath
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .fused import (gelu_linear, layer_norm_linear, linear,
                    onednn_fusable)


class Mlp(nn.Module):
    """Two-layer MLP ``fc1 -> GELU (exact) -> fc2`` on the last dimension.

    Args:
        in_features (int): Input and output channels.
        hidden_features (int): Hidden channels.
    """

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self,
                x: torch.Tensor,
                residual: Optional[torch.Tensor] = None,
                norm: Optional[nn.LayerNorm] = None) -> torch.Tensor:
        """``fc2(gelu(fc1(norm(x))))``, plus ``residual`` when given.

        CPU inference fuses the GELU and the residual into the GEMM
        epilogues; training keeps neither the normalised input nor the GELU
        output alive (both are recomputed in backward), see :mod:`.fused`.

        Args:
            x (Tensor): (..., C) input.
            residual (Tensor, optional): Added to the output.
            norm (nn.LayerNorm, optional): Pre-norm applied to ``x`` first.
        """
        if onednn_fusable(x):
            if norm is not None:
                x = norm(x)
            return linear(linear(x, self.fc1, gelu=True), self.fc2,
                          residual=residual)
        hidden = self.fc1(x) if norm is None else layer_norm_linear(
            x, norm, self.fc1)
        out = gelu_linear(hidden, self.fc2)
        return out if residual is None else out.add_(residual)


def build_drop_path(drop_prob: float) -> nn.Module:
    """``DropPath(p)`` or ``nn.Identity`` when ``p == 0`` (as the official
    models do, so state dicts and module trees match)."""
    return DropPath(drop_prob) if drop_prob > 0. else nn.Identity()


def residual_fusable(module: nn.Module, drop_path: nn.Module) -> bool:
    """Whether ``x + drop_path(branch)`` may be computed as ``branch + x``
    inside the branch's last op: the drop path is a no-op."""
    return isinstance(drop_path, nn.Identity) or not module.training


def drop_path_rates(drop_path_rate: float, depths: List[int]) -> List[float]:
    """Linear stochastic-depth schedule over all blocks."""
    return [
        float(r) for r in torch.linspace(
            0, drop_path_rate, sum(depths), device='cpu')
    ]


@contextlib.contextmanager
def _keep_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged inside the block (used
    while a checkpointed block is recomputed, so the statistics are updated
    once per step as without checkpointing)."""
    saved = [(bn, bn.momentum, bn.num_batches_tracked.clone())
             for bn in module.modules()
             if isinstance(bn, _BatchNorm) and bn.track_running_stats]
    for bn, _, _ in saved:
        bn.momentum = 0.
    try:
        yield
    finally:
        for bn, momentum, tracked in saved:
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)


def checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``block(x)`` with non-reentrant gradient checkpointing.

    The recomputation reuses the forward's RNG state (same DropPath masks)
    and does not update BatchNorm running statistics a second time.
    """
    return checkpoint(
        block, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(),
                            _keep_batchnorm_stats(block)))
