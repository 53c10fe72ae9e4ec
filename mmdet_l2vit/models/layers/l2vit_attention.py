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
- :class:`SoftmaxGlobalAttention` (ablation, not in the official models):
  ordinary softmax attention over all N tokens of the map, for the stages
  where tokens are few (quadratic in N).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function

from .attention_rows import check_queries, split_heads, window_softmax_rows
from .windows import window_sdpa

#: The official denominator floor of the linear attention.
DENOMINATOR_FLOOR = 100.0
#: What keeps the denominator positive when the floor is switched off.
DENOMINATOR_EPS = 1e-6


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


def linear_attention_denominator(q_dot_k_sum: torch.Tensor,
                                 floor: Optional[float]) -> torch.Tensor:
    """``max(Q' . sum K', floor)``, or ``+ eps`` with the floor off."""
    if floor is None:
        return q_dot_k_sum + DENOMINATOR_EPS
    return q_dot_k_sum.clamp(min=floor)


def relu_linear_attention(qkv: torch.Tensor, temperature: torch.Tensor,
                          denominator_floor: Optional[float]) -> torch.Tensor:
    """``(Q' @ (K'^T V * tau)) / denominator(Q' . sum_n K'_n)`` per head,
    with ``Q' = relu(Q)``, ``K' = relu(K)``, in float32.

    Args:
        qkv (Tensor): ``(B, N, 3, heads, d)``, the qkv projection.
        temperature (Tensor): ``(heads, 1, 1)``, ``tau``.
        denominator_floor (float, optional): The floor, or ``None`` for
            ``+ eps`` (:func:`linear_attention_denominator`).

    Returns:
        Tensor: ``(B, N, heads, d)`` float32.
    """
    if has_torch_function((qkv, temperature)):  # the backward routes
        return handle_torch_function(relu_linear_attention,
                                     (qkv, temperature), qkv, temperature,
                                     denominator_floor)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        # tensors of their own, so nothing keeps qkv alive for backward
        q, k = F.relu(q.float()), F.relu(k.float())
        v = v.float().contiguous()
        kv = (k.transpose(-2, -1) @ v) * temperature.float()
        k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, heads, d, 1)
        out = (q @ kv) / linear_attention_denominator(q @ k_sum,
                                                      denominator_floor)
    return out.transpose(1, 2)


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

    #: What :meth:`attention_rows` returns (for the analysis tools).
    attention_kind = 'window_softmax'

    def attention_rows(self, x: torch.Tensor,
                       queries: torch.Tensor) -> torch.Tensor:
        """Softmax weights of the queries over their window.

        Args:
            x (Tensor): (B, H, W, C), what :meth:`forward` receives.
            queries (Tensor): Q flat token indices into H*W.

        Returns:
            Tensor: (B, heads, Q, H*W) float32, zero outside the query's
            window. The zero-padded tokens are keys too (their value is the
            qkv bias); their weight is dropped, so rows of windows that
            reach over the bottom/right border sum to less than 1.
        """
        H, W = x.shape[1:3]
        ws = self.window_size
        qkv = pad_projection(self.qkv(x), -H % ws, -W % ws, self.qkv.bias)
        return window_softmax_rows(qkv, (H, W), ws, self.num_heads, queries)


class LinearAttention(nn.Module):
    """Global linear attention over all tokens of the map.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; the head dim is ``C // num_heads``.
        qkv_bias (bool): Bias on the qkv projection. Default: True.
        denominator_floor (float, optional): Lower bound of the
            denominator (official: 100). ``None`` switches the floor off:
            the ordinary normalisation ``Q' . sum_n K'_n + 1e-6``, whose
            rows sum to ``tau`` at any resolution. Default: 100.
    """

    def __init__(self, embed_dims: int, num_heads: int,
                 qkv_bias: bool = True,
                 denominator_floor: Optional[float] = DENOMINATOR_FLOOR
                 ) -> None:
        super().__init__()
        if denominator_floor is not None and denominator_floor <= 0:
            raise ValueError('denominator_floor must be positive or None '
                             f'(no floor), got {denominator_floor!r}.')
        self.num_heads = num_heads
        self.denominator_floor = denominator_floor
        head_dims = embed_dims // num_heads
        self.temperature = nn.Parameter(
            torch.full((num_heads, 1, 1), head_dims**-0.5))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, H, W, C) map -> (B, H, W, C)."""
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H * W, 3, self.num_heads, -1)
        out = relu_linear_attention(qkv, self.temperature,
                                    self.denominator_floor)
        return self.proj(out.to(x.dtype).reshape(B, H, W, C))

    #: What :meth:`attention_rows` returns (for the analysis tools).
    attention_kind = 'linear'

    def attention_rows(self, x: torch.Tensor,
                       queries: torch.Tensor) -> torch.Tensor:
        """Linear-attention weights of the queries over all tokens:
        ``relu(q) . relu(k_j) * tau / denominator(relu(q) . sum_n relu(k_n))``
        (:func:`linear_attention_denominator`: the floor, or ``+ eps``
        without it).

        Args:
            x (Tensor): (B, H, W, C), what :meth:`forward` receives.
            queries (Tensor): Q flat token indices into H*W.

        Returns:
            Tensor: (B, heads, Q, H*W) float32; a row sums to ``tau`` times
            ``q . sum k / denominator`` (< ``tau`` where the floor binds).
        """
        B, H, W, C = x.shape
        queries = check_queries(queries, H * W)
        q, k, _ = self.qkv(x).view(B, H * W, 3, C).unbind(2)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.relu(split_heads(q[:, queries], self.num_heads).float())
            k = F.relu(split_heads(k, self.num_heads).float())
            numerator = (q @ k.transpose(-2, -1)) * self.temperature.float()
            k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, heads, d, 1)
            return numerator / linear_attention_denominator(
                q @ k_sum, self.denominator_floor)


class SoftmaxGlobalAttention(nn.Module):
    """Multi-head softmax attention over all tokens of the map (ablation).

    The same projections as :class:`LinearAttention` without its
    temperature; logits scaled by ``head_dims**-0.5``. Quadratic in the
    tokens: meant for the last stage, where they are few.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; the head dim is ``C // num_heads``.
        qkv_bias (bool): Bias on the qkv projection. Default: True.
    """

    def __init__(self, embed_dims: int, num_heads: int,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, H, W, C) map -> (B, H, W, C)."""
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H * W, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    #: What :meth:`attention_rows` returns (for the analysis tools).
    attention_kind = 'softmax'

    def attention_rows(self, x: torch.Tensor,
                       queries: torch.Tensor) -> torch.Tensor:
        """Softmax weights of the queries over all tokens (O(Q * N)).

        Args:
            x (Tensor): (B, H, W, C), what :meth:`forward` receives.
            queries (Tensor): Q flat token indices into H*W.

        Returns:
            Tensor: (B, heads, Q, H*W) float32, rows summing to 1.
        """
        B, H, W, C = x.shape
        queries = check_queries(queries, H * W)
        q, k, _ = self.qkv(x).view(B, H * W, 3, C).unbind(2)
        q = split_heads(q[:, queries], self.num_heads).float()
        k = split_heads(k, self.num_heads).float()
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1]**-0.5
        return logits.softmax(dim=-1)
