"""The L²ViT runner of the CPU inference engine.

The stem's BatchNorms are folded into its convs (ReLU fused), its LayerNorm
runs in place over the conv output; a downsample layer normalises into the
workspace's :data:`.l2vit_blocks.SHARED_MAP`; every block then works in place
on the fresh downsample output (:mod:`.l2vit_blocks`); the output norms run
chunked, written transposed to NCHW.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.l2vit_blocks import LGABlock, LWABlock
from .chunks import Workspace, layer_norm_into, nchw_outputs
from .l2vit_blocks import SHARED_MAP, lga_block_, lwa_block_
from .onednn import conv2d_relu, fold_batchnorm


def stem(embed: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stride-4 stem: zero pad right/bottom to a multiple of 4, conv3x3
    + BN + ReLU, conv3x3 + BN (BatchNorms folded), LayerNorm in place.

    Args:
        embed (nn.Module): The StemEmbed (``proj.proj`` = conv, bn, ReLU,
            conv, bn; ``norm``).
        x (Tensor): (B, C_in, H, W) images (not modified).

    Returns:
        Tensor: (B, ceil(H/4), ceil(W/4), C), contiguous.
    """
    H, W = x.shape[-2:]
    if H % 4 or W % 4:
        x = F.pad(x, (0, -W % 4, 0, -H % 4))
    x = x.contiguous(memory_format=torch.channels_last)
    conv1, bn1, _, conv2, bn2 = embed.proj.proj
    weight, bias = fold_batchnorm(conv1, bn1)
    x = conv2d_relu(x, weight, bias, conv1)
    weight, bias = fold_batchnorm(conv2, bn2)
    x = F.conv2d(x, weight, bias, conv2.stride, conv2.padding)
    x = x.permute(0, 2, 3, 1).contiguous()  # channels-last: no copy
    return layer_norm_into(x, embed.norm, x)


def downsample(layer: nn.Module, x: torch.Tensor,
               workspace: Workspace) -> torch.Tensor:
    """LayerNorm into :data:`SHARED_MAP`, zero pad odd sizes right/bottom,
    2x2 stride-2 conv.

    Args:
        layer (nn.Module): The Downsample (``norm``, ``proj``).
        x (Tensor): (B, H, W, C_in) (not modified).
        workspace (Workspace): Scratch buffers of this forward.

    Returns:
        Tensor: (B, ceil(H/2), ceil(W/2), C_out), a new contiguous map.
    """
    x = layer_norm_into(x, layer.norm,
                        workspace.get(SHARED_MAP, tuple(x.shape), x))
    H, W = x.shape[1:3]
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    return layer.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def run_l2vit(backbone: nn.Module, x: torch.Tensor
              ) -> Tuple[torch.Tensor, ...]:
    """An L2ViT's outputs, as ``run_cpu_inference`` returns them."""
    return nchw_outputs(backbone, l2vit_stages(backbone, x))


def l2vit_stages(backbone: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The (B, H_i, W_i, C_i) maps of the stages up to the last output index
    (the workspace is freed on return, before the output norms)."""
    workspace = Workspace()
    stage_outputs = []
    for i in range(max(backbone.out_indices) + 1):
        layer = backbone.downsample_layers[i]
        x = stem(layer, x) if i == 0 else downsample(layer, x, workspace)
        for block in backbone.stages[i]:
            if isinstance(block, LWABlock):
                x = lwa_block_(block, x)
            elif isinstance(block, LGABlock):
                x = lga_block_(block, x, workspace)
            else:
                raise TypeError(f'L2ViT CPU inference: unknown block '
                                f'{type(block).__name__}.')
        stage_outputs.append(x)
    return stage_outputs
