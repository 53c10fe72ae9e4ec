"""The two attentions of L²ViT, on channels-last ``(B, H, W, C)`` maps.

- :class:`WindowAttention` (LWA blocks): softmax attention inside
  non-overlapping windows aligned top-left on the zero-padded map; no
  shift, no relative position bias, no mask: the padding tokens take part
  as keys and values, exactly as the official model.
- :class:`LinearAttention` (LGA blocks): global linear attention with the
  ReLU kernel, "kv first". For each head, with Q' = relu(Q), K' = relu(K)::

      out = (Q' @ (K'^T V * tau)) / max(Q' . sum_n K'_n, 100)

  ``tau`` is a learnable per-head temperature that scales only the
  numerator; the denominator floor of 100 (not an eps) is part of the
  official model and makes the output resolution dependent. The reductions
  over all N tokens run in float32 even under fp16/bf16 autocast: at
  detection resolution N is ~60k and fp16 sums overflow.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .windows import window_sdpa

#: The official denominator floor of the linear attention.
DENOMINATOR_FLOOR = 100.0


def pad_projection(projected: torch.Tensor, pad_bottom: int, pad_right: int,
                   bias: torch.Tensor) -> torch.Tensor:
    """``linear(F.pad(x))`` from ``linear(x)`` of a (B, H, W, C) map: a zero
    token projects to the bias, so the padding is filled with it."""
    H, W = projected.shape[1:3]
    padded = F.pad(projected, (0, 0, 0, pad_right, 0, pad_bottom))
    if bias is not None:
        padded[:, H:] = bias
        padded[:, :H, W:] = bias
    return padded


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
        """Args:
            x (Tensor): (B, H, W, C), normalised (the official model pads
                right/bottom with zeros after the norm).

        Returns:
            Tensor: (B, H, W, C).
        """
        H, W = x.shape[1:3]
        ws = self.window_size
        qkv = pad_projection(self.qkv(x), -H % ws, -W % ws, self.qkv.bias)
        out = self.proj(window_sdpa(qkv, ws, self.num_heads))
        return out[:, :H, :W]


class LinearAttention(nn.Module):
    """Global linear attention over all tokens of the map.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; the head dim is ``C // num_heads``.
        qkv_bias (bool): Bias on the qkv projection. Default: True.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, H, W, C) map -> (B, H, W, C)."""
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H * W, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # tensors of their own, so nothing keeps qkv alive for backward
            q, k = F.relu(q.float()), F.relu(k.float())
            v = v.float().contiguous()
            kv = (k.transpose(-2, -1) @ v) * self.temperature.float()
            k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, heads, d, 1)
            denominator = (q @ k_sum).clamp(min=DENOMINATOR_FLOOR)
            out = (q @ kv) / denominator
        out = out.to(x.dtype).transpose(1, 2).reshape(B, H, W, C)
        return self.proj(out)
