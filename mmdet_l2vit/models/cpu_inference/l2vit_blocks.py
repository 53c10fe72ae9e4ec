"""L²ViT blocks for CPU inference, banded and chunked, in place on one map.

Every function writes its result over ``x``, a contiguous ``(B, H, W, C)``
map the engine owns (a stage's first input is the fresh downsample output):

- the conditional position encodings run in bands of image rows over ``x``
  itself, the identity folded into the centre tap of the depthwise kernel;
- local window attention runs in bands of whole window rows: windows never
  straddle two bands, so each band's LayerNorm, zero padding, qkv, window
  attention, projection and residual stay in cache;
- linear global attention runs in two passes over token chunks: the first
  accumulates ``sum_n relu(k_n)`` and the per-head ``relu(K)^T V`` and keeps
  ``relu(Q)`` in the workspace's :data:`SHARED_MAP`; the second forms the
  output, its denominator, the projection and the residual chunk by chunk;
- the local concentration module (two depthwise convs) runs in bands of
  image rows with a halo, reading the normalised map from :data:`SHARED_MAP`;
- the MLP half runs in token chunks (:func:`.chunks.mlp_residual_`).

The results equal the reference blocks up to float32 rounding (the token sums
are accumulated chunk by chunk, the CPE identity is folded into the kernel).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.l2vit_attention import (DENOMINATOR_FLOOR, LinearAttention,
                                      WindowAttention)
from ..layers.l2vit_blocks import LGABlock, LWABlock
from ..layers.windows import window_sdpa
from . import chunks
from .chunks import Workspace, heads_view, layer_norm_into, mlp_residual_
from .onednn import conv2d_gelu, linear, linear_add

#: Workspace key of the one map-sized L²ViT buffer that holds, in turn,
#: relu(Q) of a linear attention, the normalised input of the local
#: concentration module and the normalised input of a downsample conv. Each
#: use ends before the next begins, and one buffer (rather than three)
#: saves the page faults of first touching two more maps per forward.
SHARED_MAP = 'l2vit:relu_q|lcm_input|downsample_input'


def conv_pos_enc_(x: torch.Tensor, cpe: nn.Module) -> torch.Tensor:
    """``x = x + dwconv3x3(x)`` in bands of image rows, written over ``x``.

    Bands run top to bottom; each reads its rows and the next one (not yet
    overwritten) plus a copy of the original row above it, saved before the
    previous band was written.

    Args:
        x (Tensor): (B, H, W, C), contiguous, owned by the engine.
        cpe (nn.Module): The ConvPosEnc (``proj``: depthwise 3x3 conv).

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    weight = cpe.proj.weight.clone()  # a new kernel: the identity folded in
    weight[:, :, 1, 1] += 1.
    rows = chunks.chunk_rows(H, W, 2 * C, x.element_size())
    above = None  # the original row just above the current band
    for top, bottom in chunks.row_bands(H, rows):
        source = x[:, top:min(bottom + 1, H)]
        if above is not None:
            source = torch.cat([above, source], dim=1)
        band = F.conv2d(source.permute(0, 3, 1, 2), weight, cpe.proj.bias,
                        padding=1, groups=C).permute(0, 2, 3, 1)
        offset = 0 if above is None else 1
        above = x[:, bottom - 1:bottom].clone()
        x[:, top:bottom] = band[:, offset:offset + bottom - top]
    return x


def window_attention_(x: torch.Tensor, norm: nn.Module,
                      attn: WindowAttention) -> torch.Tensor:
    """``x += attn(norm(x))`` in bands of window rows, in place.

    Args:
        x (Tensor): (B, H, W, C), owned by the engine.
        norm (nn.Module): The pre-norm (applied before the zero padding).
        attn (WindowAttention): The attention.

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    ws = attn.window_size
    pad_r = -W % ws
    rows = chunks.chunk_rows(H, W, 3 * C, x.element_size())
    rows = max(ws, rows // ws * ws)
    for top, bottom in chunks.row_bands(H, rows):
        band = x[:, top:bottom]
        pad_b = -(bottom - top) % ws
        normed = norm(band)
        if pad_b or pad_r:
            normed = F.pad(normed, (0, 0, 0, pad_r, 0, pad_b))
        out = window_sdpa(linear(normed, attn.qkv), ws, attn.num_heads)
        if pad_b or pad_r:
            out = out[:, :bottom - top, :W]
        x[:, top:bottom] = linear_add(out, attn.proj, band)
    return x


def linear_attention_(x: torch.Tensor, norm: nn.Module,
                      attn: LinearAttention,
                      workspace: Workspace) -> torch.Tensor:
    """``x += attn(norm(x))`` in two passes over token chunks, in place.

    Args:
        x (Tensor): (B, H, W, C), contiguous, owned by the engine.
        norm (nn.Module): The pre-norm.
        attn (LinearAttention): The attention.
        workspace (Workspace): Holds relu(Q) in :data:`SHARED_MAP`.

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    N, heads = H * W, attn.num_heads
    d = C // heads
    tokens = x.view(B, N, C)
    spans = chunks.token_spans(
        N, chunks.chunk_tokens(N, 3 * C, x.element_size()))
    queries = workspace.get(SHARED_MAP, (B, N, C), x)
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
            tokens[i, span] = linear_add(out, attn.proj, tokens[i, span])
    return x


def local_concentration_(x: torch.Tensor, norm: nn.Module, lcm: nn.Module,
                         workspace: Workspace) -> torch.Tensor:
    """``x += lcm(norm(x))`` in bands of image rows, in place.

    ``norm(x)`` is written to :data:`SHARED_MAP` chunk by chunk; each band of
    the two depthwise convs reads it with a halo of ``2 * (k // 2)`` rows on
    each side (the first conv's outputs next to an inner band edge are only
    used by the second conv's halo, whose outputs there are dropped), so
    every intermediate of the module is band-sized.

    Args:
        x (Tensor): (B, H, W, C), owned by the engine.
        norm (nn.Module): The pre-norm (``norm3``).
        lcm (nn.Module): The LocalConcentration (``conv1``, ``bn``,
            ``conv2``); the BatchNorm uses its running statistics.
        workspace (Workspace): Holds the normalised map.

    Returns:
        Tensor: ``x``.
    """
    B, H, W, C = x.shape
    normed = layer_norm_into(x, norm,
                             workspace.get(SHARED_MAP, (B, H, W, C), x))
    bn = lcm.bn
    halo = 2 * (lcm.conv1.kernel_size[0] // 2)
    rows = max(halo, chunks.chunk_rows(H, W, 3 * C, x.element_size()))
    for top, bottom in chunks.row_bands(H, rows):
        first, last = max(top - halo, 0), min(bottom + halo, H)
        band = conv2d_gelu(normed[:, first:last].permute(0, 3, 1, 2),
                           lcm.conv1)
        band = F.batch_norm(band, bn.running_mean, bn.running_var,
                            bn.weight, bn.bias, False, 0., bn.eps)
        band = lcm.conv2(band).permute(0, 2, 3, 1)
        x[:, top:bottom] += band[:, top - first:bottom - first]
    return x


def lwa_block_(block: LWABlock, x: torch.Tensor) -> torch.Tensor:
    """The local window attention block over ``x``, in place:
    ``x = cpe0(x); x += attn(norm1(x)); x = cpe1(x); x += mlp(norm2(x))``.

    Args:
        block (LWABlock): The block (drop path a no-op).
        x (Tensor): (B, H, W, C), owned by the engine.

    Returns:
        Tensor: ``x`` (made contiguous first if it is not).
    """
    x = conv_pos_enc_(x.contiguous(), block.cpe[0])
    x = window_attention_(x, block.norm1, block.attn)
    x = conv_pos_enc_(x, block.cpe[1])
    return mlp_residual_(x, block.norm2, block.mlp)


def lga_block_(block: LGABlock, x: torch.Tensor,
               workspace: Workspace) -> torch.Tensor:
    """The linear global attention block over ``x``, in place:
    ``x = cpe(x); x += attn(norm1(x)); x += lcm(norm3(x));
    x += mlp(norm2(x))``.

    Args:
        block (LGABlock): The block (drop path a no-op).
        x (Tensor): (B, H, W, C), owned by the engine.
        workspace (Workspace): Scratch buffers of this forward.

    Returns:
        Tensor: ``x`` (made contiguous first if it is not).
    """
    x = conv_pos_enc_(x.contiguous(), block.cpe[0])
    x = linear_attention_(x, block.norm1, block.attn, workspace)
    x = local_concentration_(x, block.norm3, block.local_mp, workspace)
    return mlp_residual_(x, block.norm2, block.mlp)
