"""Local window self-attention as in L²ViT's LWA block.

Windows are aligned top-left on the zero-padded map. There is no shift, no
relative position bias and no mask: the zero-padded tokens take part as keys
and values (their k and v are the qkv bias), exactly as the official model.
"""
import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (B, H, W, C), already normalised.

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        ws = self.window_size
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        windows = window_partition(x, ws)
        num_windows, N, _ = windows.shape
        qkv = self.qkv(windows).view(num_windows, N, 3, self.num_heads,
                                     C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(num_windows, N, C))
        out = window_merge(out, ws, B, Hp, Wp)
        if pad_b or pad_r:
            out = out[:, :H, :W]
        return out
