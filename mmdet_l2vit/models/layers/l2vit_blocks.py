"""L²ViT building blocks on channels-last maps.

Every block takes and returns a ``(B, H, W, C)`` tensor. ``Linear`` and
``LayerNorm`` act on its last dimension directly, and ``x.permute(0, 3, 1,
2)`` is a zero-copy NCHW view in ``channels_last`` memory format for the
depthwise convs, so no block transposes its activations.

For float32 CPU inference the blocks run banded and chunked, in place on one
map (:mod:`.l2vit_inference`); training and autocast take the plain path.

Module and parameter names follow the official L²ViT code so that its
checkpoints map 1:1 (``cpe.0.proj``, ``local_mp.conv1``, ``norm3`` ...).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .chunked import (Workspace, layer_norm_, layer_norm_into,
                      mlp_block_inference)
from .common import Mlp, build_drop_path, residual_fusable
from .fused import conv2d_gelu, onednn_fusable
from .l2vit_inference import (SCRATCH, conv_pos_enc_inference_,
                              linear_attention_inference_,
                              local_concentration_inference_,
                              window_attention_inference_)
from .linear_attention import LinearAttention
from .window_attention import WindowAttention


def conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW conv module to a (B, H, W, C) map, returning (B, H, W,
    C)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvPosEnc(nn.Module):
    """Conditional position encoding: ``x + dwconv3x3(x)``.

    The identity is folded into the centre tap of the depthwise kernel, so
    the residual costs no extra pass (gradients w.r.t. the kernel are
    unchanged).

    Args:
        embed_dims (int): Channels.
    """

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(embed_dims, embed_dims, 3, padding=1,
                              groups=embed_dims)
        identity = torch.zeros(embed_dims, 1, 3, 3)
        identity[:, :, 1, 1] = 1.
        self.register_buffer('identity', identity, persistent=False)

    def fused_weight(self) -> torch.Tensor:
        """The depthwise kernel with the identity folded in."""
        return self.proj.weight + self.identity.to(self.proj.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.permute(0, 3, 1, 2), self.fused_weight(),
                       self.proj.bias, padding=1, groups=self.proj.groups)
        return out.permute(0, 2, 3, 1)


class LocalConcentration(nn.Module):
    """Local concentration module (LCM): dwconv7 -> GELU -> BN -> dwconv7.

    Args:
        embed_dims (int): Channels.
        kernel_size (int): Depthwise kernel size. Default: 7.
    """

    def __init__(self, embed_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(embed_dims, embed_dims, kernel_size,
                               padding=padding, groups=embed_dims)
        self.bn = nn.BatchNorm2d(embed_dims)
        self.conv2 = nn.Conv2d(embed_dims, embed_dims, kernel_size,
                               padding=padding, groups=embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.conv2(self.bn(conv2d_gelu(x, self.conv1)))
        return x.permute(0, 2, 3, 1)


class LWABlock(nn.Module):
    """Local window attention block.

    ``x = CPE0(x); x += attn(norm1(x)); x = CPE1(x); x += mlp(norm2(x))``.

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        window_size (int): Window side.
        mlp_ratio (float): MLP hidden ratio.
        drop_path (float): Stochastic depth rate of every residual branch.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.cpe = nn.ModuleList(
            [ConvPosEnc(embed_dims), ConvPosEnc(embed_dims)])
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = WindowAttention(embed_dims, num_heads, window_size)
        self.drop_path = build_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))

    def forward(self,
                x: torch.Tensor,
                workspace: Optional[Workspace] = None,
                inplace: bool = False) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C).
            workspace (Workspace, optional): Unused (the signature of the
                L²ViT blocks).
            inplace (bool): CPU inference may write the output over ``x``.
        """
        if residual_fusable(self, self.drop_path) and onednn_fusable(x):
            # CPU inference: every step banded or chunked, in place on one
            # map (see .l2vit_inference)
            x = x.contiguous() if inplace else x.clone(
                memory_format=torch.contiguous_format)
            x = conv_pos_enc_inference_(x, self.cpe[0])
            x = window_attention_inference_(x, self.norm1, self.attn)
            x = conv_pos_enc_inference_(x, self.cpe[1])
            return mlp_block_inference(x, self.norm2, self.mlp)
        x = self.cpe[0](x)
        x = x + self.drop_path(self.attn(x, norm=self.norm1))
        x = self.cpe[1](x)
        if residual_fusable(self, self.drop_path):
            return self.mlp(x, residual=x, norm=self.norm2)
        return self.drop_path(self.mlp(x, norm=self.norm2)).add_(x)


class LGABlock(nn.Module):
    """Linear global attention block with the local concentration module.

    ``x = CPE(x); x += attn(norm1(x)); x += LCM(norm3(x));
    x += mlp(norm2(x))`` (norm3 is used before norm2, as officially).

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        mlp_ratio (float): MLP hidden ratio.
        drop_path (float): Stochastic depth rate of every residual branch.
    """

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.cpe = nn.ModuleList([ConvPosEnc(embed_dims)])
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = LinearAttention(embed_dims, num_heads)
        self.drop_path = build_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))
        self.norm3 = nn.LayerNorm(embed_dims)
        self.local_mp = LocalConcentration(embed_dims)

    def forward(self,
                x: torch.Tensor,
                workspace: Optional[Workspace] = None,
                inplace: bool = False) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C).
            workspace (Workspace, optional): Scratch buffers shared by the
                blocks of one inference forward.
            inplace (bool): CPU inference may write the output over ``x``.
        """
        if residual_fusable(self, self.drop_path) and onednn_fusable(x):
            # CPU inference: every step banded or chunked, in place on one
            # map (see .l2vit_inference)
            x = x.contiguous() if inplace else x.clone(
                memory_format=torch.contiguous_format)
            x = conv_pos_enc_inference_(x, self.cpe[0])
            x = linear_attention_inference_(x, self.norm1, self.attn,
                                            workspace)
            x = local_concentration_inference_(x, self.norm3,
                                               self.local_mp, workspace)
            return mlp_block_inference(x, self.norm2, self.mlp)
        x = self.cpe[0](x)
        if residual_fusable(self, self.drop_path):
            x = self.attn(x, residual=x, norm=self.norm1)
        else:
            x = self.drop_path(self.attn(x, norm=self.norm1)).add_(x)
        x = self.drop_path(self.local_mp(self.norm3(x))).add_(x)
        if residual_fusable(self, self.drop_path):
            return self.mlp(x, residual=x, norm=self.norm2)
        return self.drop_path(self.mlp(x, norm=self.norm2)).add_(x)


class ConvStem(nn.Module):
    """Two stride-2 3x3 convs with BatchNorm (official '2L' stem).

    Args:
        in_channels (int): Image channels.
        embed_dims (int): Output channels (the hidden width is half).
    """

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        hidden = embed_dims // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, embed_dims, 3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, bn1, _, conv2, bn2 = self.proj
        if onednn_fusable(x) and not (bn1.training or bn2.training):
            # CPU inference: BatchNorms folded into the convs, ReLU fused
            weight, bias = fold_batchnorm(conv1, bn1)
            x = torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, list(conv1.padding), list(conv1.stride),
                list(conv1.dilation), conv1.groups, 'relu', [], '')
            weight, bias = fold_batchnorm(conv2, bn2)
            return F.conv2d(x, weight, bias, conv2.stride, conv2.padding)
        return self.proj(x)


def fold_batchnorm(conv: nn.Conv2d,
                   bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv (eval-mode BN).

    Equal to the two ops up to float32 rounding.
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    return weight, (bias - bn.running_mean) * scale + bn.bias


class StemEmbed(nn.Module):
    """Stride-4 stem: zero-pad right/bottom to a multiple of 4, conv stem,
    LayerNorm. NCHW image -> (B, H/4, W/4, C).

    Args:
        in_channels (int): Image channels.
        embed_dims (int): Output channels.
    """

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        self.proj = ConvStem(in_channels, embed_dims)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self,
                x: torch.Tensor,
                workspace: Optional[Workspace] = None) -> torch.Tensor:
        """Args:
            x (Tensor): (B, C, H, W) images.
            workspace (Workspace, optional): Unused (the signature of the
                downsample layers).
        """
        H, W = x.shape[-2:]
        if H % 4 or W % 4:
            x = F.pad(x, (0, (4 - W % 4) % 4, 0, (4 - H % 4) % 4))
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        x = x.permute(0, 2, 3, 1)
        if onednn_fusable(x) and x.is_contiguous():
            return layer_norm_(x, self.norm)  # inference: over the conv out
        return self.norm(x)


class Downsample(nn.Module):
    """Pre-norm 2x2 stride-2 conv: LayerNorm over the input channels,
    zero-pad odd sizes right/bottom, conv. (B, H, W, Cin) -> (B, ceil(H/2),
    ceil(W/2), Cout).

    Args:
        in_channels (int): Input channels (the LayerNorm width).
        out_channels (int): Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 2, stride=2)
        self.norm = nn.LayerNorm(in_channels)

    def forward(self,
                x: torch.Tensor,
                workspace: Optional[Workspace] = None) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, Cin).
            workspace (Workspace, optional): CPU inference normalises into
                its scratch map buffer.
        """
        if workspace is not None and onednn_fusable(x):
            x = layer_norm_into(x, self.norm,
                                workspace.get(SCRATCH, tuple(x.shape), x))
        else:
            x = self.norm(x)
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        return conv_channels_last(self.proj, x)
