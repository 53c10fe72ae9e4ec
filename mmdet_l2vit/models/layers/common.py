"""Small bricks shared by the backbones (pure torch + timm, no registries)."""
import contextlib
from typing import Iterable, Iterator, List

import torch
from timm.layers import DropPath
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .memory import backward_routes_now, cpu_backward_routes


class Mlp(nn.Module):
    """Two-layer MLP ``fc2(gelu(fc1(x)))`` (exact GELU) on the last dim.

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
        float(r) for r in torch.linspace(
            0, drop_path_rate, sum(depths), device='cpu')
    ]


def conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW conv module to a (B, H, W, C) map, returning (B, H, W,
    C); the permutes are zero-copy views of a channels-last tensor."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def channels_last_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> contiguous (B, C, H, W), one 2-D transpose per image
    (PyTorch's blocked transpose copy; ``permute(0, 3, 1, 2).contiguous()``
    takes the generic strided copy, several times slower on CPU)."""
    B, H, W, C = x.shape
    tokens = x.reshape(B, H * W, C)
    if B == 1:
        return tokens[0].t().contiguous().view(1, C, H, W)
    out = x.new_empty(B, C, H, W)
    for i in range(B):
        out[i].view(C, H * W).copy_(tokens[i].t())
    return out


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

    The recomputation reuses the forward's RNG state (same DropPath masks),
    does not update BatchNorm running statistics a second time and runs
    under the forward's backward routing (:func:`.memory.cpu_backward_routes`,
    so it saves the same tensors in the same order).
    """
    routes = backward_routes_now()

    @contextlib.contextmanager
    def recompute_context() -> Iterator[None]:
        with _keep_batchnorm_stats(block), cpu_backward_routes(routes):
            yield

    return checkpoint(
        block, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), recompute_context()))


class BlockStack(nn.ModuleList):
    """The blocks of one stage, run in order (keys ``0``, ``1``, ... as an
    ``nn.ModuleList``), each under gradient checkpointing when ``with_cp``.

    Args:
        blocks (Iterable[nn.Module]): The blocks.
        with_cp (bool): Checkpoint every block while autograd records.
    """

    def __init__(self, blocks: Iterable[nn.Module],
                 with_cp: bool = False) -> None:
        super().__init__(blocks)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            if self.with_cp and x.requires_grad:
                x = checkpointed(block, x)
            else:
                x = block(x)
        return x
