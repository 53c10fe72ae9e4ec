"""L²ViT linear global attention (ReLU kernel, "kv first").

For each head, with Q' = relu(Q), K' = relu(K)::

    out = (Q' @ (K'^T V * tau)) / max(Q' . sum_n K'_n, 100)

``tau`` is a learnable per-head temperature that scales only the numerator;
the denominator floor of 100 (not an eps) is part of the official model and
makes the output resolution dependent. The reductions over all N tokens run
in float32 even under fp16/bf16 autocast: at detection resolution N is ~60k
and fp16 sums overflow.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .fused import layer_norm_linear, linear

#: The official denominator floor.
DENOMINATOR_FLOOR = 100.0


class LinearAttention(nn.Module):
    """Global linear attention over all tokens of the map.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; the head dim is ``C // num_heads``.
        qkv_bias (bool): Bias on the qkv projection. Default: True (what the
            L²ViT blocks use).
    """

    def __init__(self, embed_dims: int, num_heads: int,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dims = embed_dims // num_heads
        self.temperature = nn.Parameter(
            torch.full((num_heads, 1, 1), head_dims**-0.5))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self,
                x: torch.Tensor,
                residual: Optional[torch.Tensor] = None,
                norm: Optional[nn.LayerNorm] = None) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C).
            norm (nn.LayerNorm, optional): Pre-norm applied to ``x`` first
                (in training the normalised tensor is recomputed in backward
                rather than stored).
            residual (Tensor, optional): Added to the output (fused into the
                output projection when possible).

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        heads = self.num_heads
        qkv = linear(x, self.qkv) if norm is None else layer_norm_linear(
            x, norm, self.qkv)
        qkv = qkv.view(B, H * W, 3, heads, C // heads)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # relu(q), relu(k) and v as (B, heads, N, head_dims) tensors of
            # their own, so nothing keeps the (B, N, 3C) qkv output alive
            q = F.relu(qkv[:, :, 0].transpose(1, 2).float())
            k = F.relu(qkv[:, :, 1].transpose(1, 2).float())
            v = qkv[:, :, 2].transpose(1, 2).float().contiguous()
            del qkv
            kv = (k.transpose(-2, -1) @ v) * self.temperature.float()
            k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, heads, head_dims, 1)
            denominator = (q @ k_sum).clamp_(min=DENOMINATOR_FLOOR)
            out = q @ kv
            out = out / denominator if torch.is_grad_enabled() else \
                out.div_(denominator)
        out = out.to(x.dtype).transpose(1, 2).reshape(B, H, W, C)
        return linear(out, self.proj, residual=residual)
