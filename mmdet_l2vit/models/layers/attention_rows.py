"""Attention rows of sampled queries, for the attention analysis tools.

Every attention module of the reference model has a method
``attention_rows(x, queries)``: from the same (B, H, W, C) input its
``forward`` receives, it returns the (B, heads, Q, H*W) float32 weights with
which the queries (flat token indices into H*W, row-major) attend to the
map's tokens. The helpers here compute them in O(Q * N), never N x N.
"""
from typing import Optional, Tuple

import torch


def check_queries(queries: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Validate flat query indices.

    Args:
        queries (Tensor): 1-D integer indices into ``num_tokens`` tokens.
        num_tokens (int): Tokens N of the map.

    Returns:
        Tensor: ``queries`` as int64.
    """
    if queries.dim() != 1 or queries.dtype.is_floating_point:
        raise ValueError('queries must be a 1-D integer tensor of flat '
                         f'token indices, got {queries.dtype} of shape '
                         f'{tuple(queries.shape)}.')
    queries = queries.long()
    if queries.numel() and (queries.min() < 0
                            or queries.max() >= num_tokens):
        raise ValueError(f'queries must index the {num_tokens} tokens of '
                         f'the map, got values in [{int(queries.min())}, '
                         f'{int(queries.max())}].')
    return queries


def split_heads(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C // heads), heads contiguous in C."""
    B, N, C = tokens.shape
    return tokens.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def window_softmax_rows(qkv: torch.Tensor,
                        size: Tuple[int, int],
                        window_size: int,
                        num_heads: int,
                        queries: torch.Tensor,
                        scale: Optional[float] = None,
                        bias: Optional[torch.Tensor] = None,
                        shift: int = 0) -> torch.Tensor:
    """Softmax rows of queries inside their windows, scattered onto the map.

    Args:
        qkv (Tensor): (B, Hp, Wp, 3C) projections of the zero-padded map
            (rolled by ``-shift`` when shifted), as the window attention's
            ``forward`` computes them.
        size (tuple[int, int]): The unpadded map size (H, W).
        window_size (int): Window side w.
        num_heads (int): Heads h.
        queries (Tensor): Q flat token indices into H*W.
        scale (float, optional): Logit scale. Default: ``head_dims**-0.5``.
        bias (Tensor, optional): What ``forward`` adds to the logits, (1 or
            nW, h, w*w, w*w), windows row-major on the padded map.
        shift (int): The cyclic shift the map was rolled by. Default: 0.

    Returns:
        Tensor: (B, h, Q, H*W) float32; zero outside the query's window.
        The padding tokens of the padded map are keys of the forward too;
        their weight is dropped here, so a row near the bottom or right
        border then sums to less than 1.
    """
    B, Hp, Wp, C3 = qkv.shape
    H, W = size
    ws, C = window_size, C3 // 3
    head_dims = C // num_heads
    scale = head_dims**-0.5 if scale is None else scale
    queries = check_queries(queries, H * W)
    num_queries, window_tokens = queries.numel(), ws * ws
    # positions on the (rolled) padded map, and the keys of each window
    rows = (queries // W - shift) % Hp
    cols = (queries % W - shift) % Wp
    offsets = torch.arange(ws, device=qkv.device)
    key_rows = (rows // ws * ws)[:, None] + offsets  # (Q, w)
    key_cols = (cols // ws * ws)[:, None] + offsets
    q = qkv[:, rows, cols, :C].reshape(B, num_queries, num_heads, head_dims)
    k = qkv[:, key_rows[:, :, None], key_cols[:, None, :], C:2 * C]
    k = k.reshape(B, num_queries, window_tokens, num_heads, head_dims)
    logits = torch.einsum('bqhd,bqnhd->bhqn', q.float(), k.float()) * scale
    if bias is not None:
        window = (rows // ws) * (Wp // ws) + cols // ws
        if bias.shape[0] == 1:
            window = torch.zeros_like(window)
        position = (rows % ws) * ws + cols % ws
        logits = logits + bias[window, :, position].float().transpose(0, 1)
    weights = logits.softmax(dim=-1)
    # back to unpadded map positions; padding keys dropped
    map_rows, map_cols = (key_rows + shift) % Hp, (key_cols + shift) % Wp
    valid = (map_rows < H)[:, :, None] & (map_cols < W)[:, None, :]
    index = (map_rows[:, :, None] * W + map_cols[:, None, :]).masked_fill(
        ~valid, 0).view(num_queries, window_tokens)
    weights = weights * valid.view(num_queries, window_tokens)
    out = weights.new_zeros(B, num_heads, num_queries, H * W)
    return out.scatter_add_(
        -1, index.expand(B, num_heads, -1, -1).contiguous(), weights)
