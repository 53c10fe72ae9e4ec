"""Local window self-attention as in L²ViT's LWA block.

Windows are aligned top-left on the zero-padded map. There is no shift, no
relative position bias and no mask: the zero-padded tokens take part as keys
and values (their k and v are the qkv bias), exactly as the official model.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .fused import layer_norm_linear, linear


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window_size`` ->
    (B * nW, window_size**2, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size,
               window_size, C)
    return x.transpose(2, 3).reshape(-1, window_size * window_size, C)


def window_merge(windows: torch.Tensor, window_size: int, B: int, H: int,
                 W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(B, H // window_size, W // window_size, window_size,
                     window_size, C)
    return x.transpose(2, 3).reshape(B, H, W, C)


class WindowAttention(nn.Module):
    """Multi-head softmax attention inside non-overlapping windows.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; the head dim is ``C // num_heads``.
        window_size (int): Window side.
        qkv_bias (bool): Bias on the qkv projection. Default: True.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self,
                x: torch.Tensor,
                norm: Optional[nn.LayerNorm] = None) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C).
            norm (nn.LayerNorm, optional): Pre-norm applied to ``x`` first
                (zero padding comes after it, as officially).

        Returns:
            Tensor: (B, H, W, C).

        The qkv and output projections act on the whole (padded) map; the
        only copies are the two permutes into and out of window-major head
        layout, which double as the window partition and merge.
        """
        H, W = x.shape[1:3]
        ws = self.window_size
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        if norm is not None and torch.is_grad_enabled():
            # Training: project the unpadded map (the normalised tensor is
            # recomputed in backward, not stored) and give the padding
            # tokens what the projection of a zero token is: the bias.
            qkv = layer_norm_linear(x, norm, self.qkv)
            if pad_b or pad_r:
                qkv = F.pad(qkv, (0, 0, 0, pad_r, 0, pad_b))
                bias = self.qkv.bias if self.qkv.bias is not None else 0.
                qkv[:, H:] = bias
                qkv[:, :H, W:] = bias
        else:
            if norm is not None:
                x = norm(x)
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            qkv = linear(x, self.qkv)
        out = linear(self.attend(qkv), self.proj)
        if pad_b or pad_r:
            out = out[:, :H, :W]
        return out

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Softmax attention inside each window of a padded qkv map.

        Args:
            qkv (Tensor): (B, Hp, Wp, 3C), Hp and Wp multiples of the window.

        Returns:
            Tensor: (B, Hp, Wp, C) attention output before the projection.
        """
        B, Hp, Wp, C3 = qkv.shape
        ws, heads = self.window_size, self.num_heads
        C = C3 // 3
        nh, nw = Hp // ws, Wp // ws
        qkv = qkv.view(B, nh, ws, nw, ws, 3, heads, C // heads)
        # -> (3, B * nh * nw, heads, ws * ws, head_dims)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(
            3, B * nh * nw, heads, ws * ws, C // heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return out.view(B, nh, nw, heads, ws, ws, C // heads).permute(
            0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, C)
