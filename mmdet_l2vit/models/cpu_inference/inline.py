"""The InLine-PVT and InLine-Swin runners of the CPU inference engine.

Patch embeddings normalise in place over their conv output; InLine blocks
run in row bands over their own input (:mod:`.inline_block`); Swin softmax
blocks attend over the whole padded map with fused projections, then run
their MLP half in token chunks in place; patch merging gathers, normalises
and reduces bands of output rows; output norms run chunked, written
transposed to NCHW.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.windows import window_sdpa
from . import chunks
from .chunks import Workspace, layer_norm_into, mlp_residual_, nchw_outputs
from .inline_block import inline_block
from .onednn import linear, linear_add


def patch_embed(embed: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Conv (kernel = stride = patch) on a channels-last copy of ``x``,
    then the LayerNorm in place over the conv output.

    Args:
        embed (nn.Module): The patch embedding (``proj``, ``norm``).
        x (Tensor): (B, C_in, H, W) (not modified).

    Returns:
        Tensor: (B, H', W', C), a new contiguous map.
    """
    x = embed.proj(x.contiguous(memory_format=torch.channels_last))
    x = x.permute(0, 2, 3, 1).contiguous()  # channels-last: no copy
    return layer_norm_into(x, embed.norm, x)


def swin_softmax_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Swin window softmax block: ``y = x + attn(norm1(x))`` (zero pad,
    cyclic shift, windows with relative position bias and shift mask), then
    ``y += mlp(norm2(y))`` in token chunks.

    Args:
        block (nn.Module): The block (``norm1``, ``attn``: a
            SwinWindowAttention, ``norm2``, ``mlp``).
        x (Tensor): (B, H, W, C) (not modified).

    Returns:
        Tensor: (B, H, W, C), a new map.
    """
    attn = block.attn
    B, H, W, C = x.shape
    ws = attn.window_size
    shift = attn.effective_shift(H, W)
    pad_b, pad_r = -H % ws, -W % ws
    normed = block.norm1(x)
    if pad_b or pad_r:
        normed = F.pad(normed, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = H + pad_b, W + pad_r
    if shift:
        normed = torch.roll(normed, shifts=(-shift, -shift), dims=(1, 2))
    out = window_sdpa(linear(normed, attn.qkv), ws, attn.num_heads,
                      attn_mask=attn.attention_bias(Hp, Wp, shift, B),
                      scale=attn.scale)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    if pad_b or pad_r:
        out = out[:, :H, :W].contiguous()
    return mlp_residual_(linear_add(out, attn.proj, x), block.norm2,
                         block.mlp)


def patch_merging(merge: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Swin 2x2 patch merging (odd sizes zero-padded by one) in bands of
    output rows: gather, LayerNorm(4C), reduction.

    Args:
        merge (nn.Module): The PatchMerging (``norm``, ``reduction``,
            ``gather_2x2``).
        x (Tensor): (B, H, W, C) (not modified).

    Returns:
        Tensor: (B, ceil(H/2), ceil(W/2), 2C), a new map.
    """
    B, H, W, C = x.shape
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = H + H % 2, W + W % 2
    out = x.new_empty(B, H // 2, W // 2, merge.reduction.out_features)
    rows = chunks.chunk_rows(H // 2, W // 2, 4 * C, x.element_size())
    for top, bottom in chunks.row_bands(H // 2, rows):
        out[:, top:bottom] = linear(
            merge.norm(merge.gather_2x2(x[:, 2 * top:2 * bottom])),
            merge.reduction)
    return out


def run_inline_pvt(backbone: nn.Module, x: torch.Tensor
                   ) -> Tuple[torch.Tensor, ...]:
    """An InLinePVT's outputs, as ``run_cpu_inference`` returns them
    (output norms when ``out_norms``)."""
    return nchw_outputs(backbone, inline_pvt_stages(backbone, x))


def run_inline_swin(backbone: nn.Module, x: torch.Tensor
                    ) -> Tuple[torch.Tensor, ...]:
    """An InLineSwin's outputs, as ``run_cpu_inference`` returns them."""
    return nchw_outputs(backbone, inline_swin_stages(backbone, x))


def inline_pvt_stages(backbone: nn.Module,
                      x: torch.Tensor) -> List[torch.Tensor]:
    """The (B, H_i, W_i, C_i) maps of the stages up to the last output index
    (the workspace is freed on return, before the output norms)."""
    workspace = Workspace()
    stage_outputs = []
    for i in range(max(backbone.out_indices) + 1):
        x = patch_embed(getattr(backbone, f'patch_embed{i + 1}'), x)
        x += backbone.stage_pos_embed(i, x.shape[1], x.shape[2])
        for block in getattr(backbone, f'block{i + 1}'):
            x = inline_block(block, x, workspace, out=x)
        stage_outputs.append(x)
        x = x.permute(0, 3, 1, 2)  # NCHW view for the next conv
    return stage_outputs


def inline_swin_stages(backbone: nn.Module,
                       x: torch.Tensor) -> List[torch.Tensor]:
    """The (B, H_i, W_i, C_i) maps of the stages up to the last output index
    (the workspace is freed on return, before the output norms)."""
    p = backbone.patch_embed.patch_size
    pad_b, pad_r = -x.shape[2] % p, -x.shape[3] % p
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b))
    x = patch_embed(backbone.patch_embed, x)
    workspace = Workspace()
    stage_outputs = []
    for i in range(max(backbone.out_indices) + 1):
        if i > 0:
            x = patch_merging(backbone.layers[i - 1].downsample, x)
        for block in backbone.layers[i].blocks:
            if block.kind == 'I':
                x = inline_block(block, x, workspace, out=x)
            else:
                x = swin_softmax_block(block, x)
        stage_outputs.append(x)
    return stage_outputs
