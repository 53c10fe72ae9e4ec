"""Non-overlapping windows: partition and softmax attention inside them.

One core serves L²ViT's local windows (no bias) and Swin's shifted windows
(relative position bias plus the shift mask).
"""
from typing import Optional

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window_size`` ->
    (B * nW, window_size**2, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size,
               window_size, C)
    return x.transpose(2, 3).reshape(-1, window_size * window_size, C)


def window_sdpa(qkv: torch.Tensor,
                window_size: int,
                num_heads: int,
                attn_mask: Optional[torch.Tensor] = None,
                scale: Optional[float] = None) -> torch.Tensor:
    """Multi-head softmax attention inside each window of a qkv map.

    Args:
        qkv (Tensor): (B, Hp, Wp, 3C) projections (q, k, v blocks of C
            channels, heads inside each block), Hp and Wp multiples of the
            window.
        window_size (int): Window side w.
        num_heads (int): Heads h.
        attn_mask (Tensor, optional): Added to the logits, (1 or B * nW, h,
            w*w, w*w), windows in row-major order per image.
        scale (float, optional): Logit scale. Default: ``head_dims**-0.5``.

    Returns:
        Tensor: (B, Hp, Wp, C) attention output before the projection.

    The one permute into window-major head layout doubles as the window
    partition, the one permute back as the merge.
    """
    B, Hp, Wp, C3 = qkv.shape
    ws, heads = window_size, num_heads
    C = C3 // 3
    nh, nw = Hp // ws, Wp // ws
    # one copy into window-major head layout; the projection is freed
    qkv = qkv.view(B, nh, ws, nw, ws, 3, heads, C // heads).permute(
        5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * nh * nw, heads, ws * ws,
                                        C // heads)
    q, k, v = qkv.unbind(0)
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                         scale=scale)
    return out.view(B, nh, nw, heads, ws, ws, C // heads).permute(
        0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, C)
