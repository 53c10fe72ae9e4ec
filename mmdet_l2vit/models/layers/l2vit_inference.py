"""Chunked CPU inference of the L²ViT attention halves (see :mod:`.chunked`).

For float32 CPU inference (no autograd, drop path a no-op), each function
writes its result over ``x``, which the caller must own:

- local window attention runs in bands of whole window rows: windows never
  straddle two bands, so each band's LayerNorm, zero padding, qkv, window
  attention, projection and residual stay in cache;
- linear global attention runs in two passes over token chunks: the first
  accumulates ``sum_n relu(k_n)`` and the per-head ``relu(K)^T V`` and keeps
  ``relu(Q)`` in a workspace buffer; the second forms the output, its
  denominator, the projection and the residual chunk by chunk. Only
  ``relu(Q)`` exists for the whole map;
- the local concentration module (two depthwise convs) runs in bands of
  image rows with a halo, reading the normalised map from a workspace
  buffer;
- the conditional position encodings run in bands over ``x`` itself, so a
  whole block (and a whole stage) works on one map without allocating
  another.

The results equal the whole-map evaluation up to float32 rounding (the
token sums are accumulated chunk by chunk).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .chunked import (Workspace, chunk_rows, chunk_tokens, heads_view,
                      layer_norm_into)
from .fused import linear
from .linear_attention import DENOMINATOR_FLOOR, LinearAttention
from .window_attention import WindowAttention

#: Workspace buffer of one map: relu(Q) of the linear attention, then the
#: normalised LCM input, then the normalised downsample input (never two of
#: them at once).
SCRATCH = 'l2vit_map_scratch'


def window_attention_inference_(x: torch.Tensor, norm: nn.Module,
                                attn: WindowAttention) -> torch.Tensor:
    """``x += attn(norm(x))`` in bands of window rows, in place.

    Args:
        x (Tensor): (B, H, W, C), owned by the caller.
        norm (nn.Module): The pre-norm (applied before zero padding).
        attn (WindowAttention): The attention.

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    ws = attn.window_size
    pad_r = (ws - W % ws) % ws
    rows = chunk_rows(H, W, 3 * C, x.element_size())
    rows = max(ws, rows // ws * ws)
    for top in range(0, H, rows):
        bottom = min(top + rows, H)
        band = x[:, top:bottom]
        pad_b = (ws - (bottom - top) % ws) % ws
        normed = norm(band)
        if pad_b or pad_r:
            normed = F.pad(normed, (0, 0, 0, pad_r, 0, pad_b))
        out = attn.attend(linear(normed, attn.qkv))
        if pad_b or pad_r:
            out = out[:, :bottom - top, :W]
        x[:, top:bottom] = linear(out, attn.proj, residual=band)
    return x


def linear_attention_inference_(
        x: torch.Tensor,
        norm: nn.Module,
        attn: LinearAttention,
        workspace: Optional[Workspace] = None) -> torch.Tensor:
    """``x += attn(norm(x))`` in two passes over token chunks, in place.

    Args:
        x (Tensor): (B, H, W, C), contiguous, owned by the caller.
        norm (nn.Module): The pre-norm.
        attn (LinearAttention): The attention.
        workspace (Workspace, optional): Scratch buffers to reuse (holds
            ``relu(Q)``).

    Returns:
        Tensor: ``x``.
    """
    x = x.contiguous()
    B, H, W, C = x.shape
    N, heads = H * W, attn.num_heads
    d = C // heads
    tokens = x.view(B, N, C)
    step = chunk_tokens(N, 3 * C, x.element_size())
    spans = [slice(s, min(s + step, N)) for s in range(0, N, step)]
    workspace = Workspace() if workspace is None else workspace
    queries = workspace.get(SCRATCH, (B, N, C), x)
    kv = x.new_zeros(B, heads, d, d)
    k_sum = x.new_zeros(B, C)
    for i in range(B):
        for span in spans:
            qkv = linear(norm(tokens[i, span]), attn.qkv)
            torch.clamp_min(qkv[:, :C], 0, out=queries[i, span])
            k = qkv[:, C:2 * C].clamp_min(0)
            k_sum[i] += k.sum(0)
            kv[i].baddbmm_(
                heads_view(k, heads).transpose(1, 2),
                heads_view(qkv[:, 2 * C:], heads))
    kv.mul_(attn.temperature)
    k_sum = k_sum.view(B, heads, d, 1)
    for i in range(B):
        for span in spans:
            q = heads_view(queries[i, span], heads)
            out = x.new_empty(span.stop - span.start, C)
            out_heads = heads_view(out, heads)
            out_heads.baddbmm_(q, kv[i], beta=0)
            out_heads.div_(
                torch.bmm(q, k_sum[i]).clamp_min_(DENOMINATOR_FLOOR))
            tokens[i, span] = linear(out, attn.proj, residual=tokens[i, span])
    return x


def local_concentration_inference_(
        x: torch.Tensor,
        norm: nn.Module,
        lcm: nn.Module,
        workspace: Optional[Workspace] = None) -> torch.Tensor:
    """``x += lcm(norm(x))`` in bands of image rows, in place.

    ``norm(x)`` is written to a workspace buffer chunk by chunk; each band
    of the two depthwise convs reads it with a halo of ``2 * (k // 2)`` rows
    on each side (the first conv's outputs next to an inner band edge are
    only used by the second conv's halo, whose outputs there are dropped),
    so every intermediate of the module is band-sized.

    Args:
        x (Tensor): (B, H, W, C), owned by the caller.
        norm (nn.Module): The pre-norm.
        lcm (nn.Module): The local concentration module (``conv1``, ``bn``,
            ``conv2``; BatchNorm in eval mode).
        workspace (Workspace, optional): Scratch buffers to reuse.

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    workspace = Workspace() if workspace is None else workspace
    normed = layer_norm_into(x, norm, workspace.get(SCRATCH, (B, H, W, C),
                                                    x))
    halo = 2 * (lcm.conv1.kernel_size[0] // 2)
    rows = max(halo, chunk_rows(H, W, 3 * C, x.element_size()))
    for top in range(0, H, rows):
        bottom = min(top + rows, H)
        first, last = max(top - halo, 0), min(bottom + halo, H)
        band = lcm(normed[:, first:last])  # (B, last - first, W, C)
        x[:, top:bottom] += band[:, top - first:bottom - first]
    return x


def conv_pos_enc_inference_(x: torch.Tensor,
                            cpe: nn.Module) -> torch.Tensor:
    """``x + dwconv3x3(x)`` in bands of image rows, written over ``x``.

    Bands run top to bottom; each reads its rows and the next one (not yet
    overwritten) plus a copy of the original row above it, saved before the
    previous band was written.

    Args:
        x (Tensor): (B, H, W, C), owned by the caller.
        cpe (nn.Module): The :class:`ConvPosEnc`.

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    weight, bias = cpe.fused_weight(), cpe.proj.bias
    rows = chunk_rows(H, W, 2 * C, x.element_size())
    above = None  # the original row just above the current band
    for top in range(0, H, rows):
        bottom = min(top + rows, H)
        source = x[:, top:min(bottom + 1, H)]
        if above is not None:
            source = torch.cat([above, source], dim=1)
        band = F.conv2d(source.permute(0, 3, 1, 2), weight, bias, padding=1,
                        groups=C).permute(0, 2, 3, 1)
        offset = 0 if above is None else 1
        above = x[:, bottom - 1:bottom].clone()
        x[:, top:bottom] = band[:, offset:offset + bottom - top]
    return x
