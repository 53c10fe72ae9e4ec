"""L²ViT building blocks on channels-last ``(B, H, W, C)`` maps.

``Linear`` and ``LayerNorm`` act on the last dimension directly, and
``x.permute(0, 3, 1, 2)`` is a zero-copy NCHW view in ``channels_last``
memory format for the convs, so no block transposes its activations.

Module and parameter names follow the official L²ViT code so that its
checkpoints map 1:1 (``cpe.0.proj``, ``local_mp.conv1``, ``norm3`` ...).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .common import Mlp, build_drop_path, conv_channels_last
from .l2vit_attention import (DENOMINATOR_FLOOR, LinearAttention,
                              SoftmaxGlobalAttention, WindowAttention)


class ConvPosEnc(nn.Module):
    """Conditional position encoding: ``x + dwconv3x3(x)``.

    Args:
        embed_dims (int): Channels.
    """

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(embed_dims, embed_dims, 3, padding=1,
                              groups=embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + conv_channels_last(self.proj, x)


class LocalConcentration(nn.Module):
    """Local concentration module (LCM): dwconv7 -> GELU -> BN -> dwconv7.

    Args:
        embed_dims (int): Channels.
        kernel_size (int): Depthwise kernel size, odd. Default: 7.
    """

    def __init__(self, embed_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError('the LCM kernel size must be odd and positive, '
                             f'got {kernel_size!r}.')
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(embed_dims, embed_dims, kernel_size,
                               padding=padding, groups=embed_dims)
        self.bn = nn.BatchNorm2d(embed_dims)
        self.conv2 = nn.Conv2d(embed_dims, embed_dims, kernel_size,
                               padding=padding, groups=embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.conv2(self.bn(F.gelu(self.conv1(x))))
        return x.permute(0, 2, 3, 1)


class LWABlock(nn.Module):
    """Local window attention block.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = self.cpe[0](x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = self.cpe[1](x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LGABlock(nn.Module):
    """Linear global attention block with the local concentration module
    (norm3 is used before norm2, as officially).

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        mlp_ratio (float): MLP hidden ratio.
        drop_path (float): Stochastic depth rate of every residual branch.
        lcm_kernel_size (int): Kernel of the LCM's depthwise convs (official:
            7); ``0`` removes the LCM branch (and its ``norm3``).
            Default: 7.
        global_attention (str): ``'linear'`` (official) or ``'softmax'``
            (:class:`SoftmaxGlobalAttention`, no temperature).
            Default: 'linear'.
        denominator_floor (float, optional): The linear attention's
            denominator floor (official: 100; ``None``: no floor).
    """

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float,
                 drop_path: float, lcm_kernel_size: int = 7,
                 global_attention: str = 'linear',
                 denominator_floor: Optional[float] = DENOMINATOR_FLOOR
                 ) -> None:
        super().__init__()
        self.cpe = nn.ModuleList([ConvPosEnc(embed_dims)])
        self.norm1 = nn.LayerNorm(embed_dims)
        if global_attention == 'linear':
            self.attn = LinearAttention(embed_dims, num_heads,
                                        denominator_floor=denominator_floor)
        elif global_attention == 'softmax':
            self.attn = SoftmaxGlobalAttention(embed_dims, num_heads)
        else:
            raise ValueError("global_attention must be 'linear' or "
                             f"'softmax', got {global_attention!r}.")
        self.drop_path = build_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))
        if lcm_kernel_size:
            self.norm3 = nn.LayerNorm(embed_dims)
            self.local_mp = LocalConcentration(embed_dims, lcm_kernel_size)
        else:
            self.norm3 = self.local_mp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = self.cpe[0](x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        if self.local_mp is not None:
            x = x + self.drop_path(self.local_mp(self.norm3(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


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
        return self.proj(x)


class StemEmbed(nn.Module):
    """Stride-4 stem: zero-pad right/bottom to a multiple of 4, conv stem,
    LayerNorm. NCHW image -> (B, ceil(H/4), ceil(W/4), C).

    Args:
        in_channels (int): Image channels.
        embed_dims (int): Output channels.
    """

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        self.proj = ConvStem(in_channels, embed_dims)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % 4 or W % 4:
            x = F.pad(x, (0, -W % 4, 0, -H % 4))
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.permute(0, 2, 3, 1))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        x = self.norm(x)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        return conv_channels_last(self.proj, x)
