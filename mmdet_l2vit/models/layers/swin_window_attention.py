"""Swin (shifted) window softmax attention with relative position bias.

Dense-prediction handling as in Swin-det: the normalised map is zero-padded
right/bottom to a multiple of the window, cyclically shifted by ``shift``
(odd blocks), split into windows, attended with the relative position bias
(and, when shifted, a mask computed at runtime for the padded size, -100
between regions as officially), merged, shifted back and cropped. Padded
tokens are not masked in unshifted windows (Swin-det behaviour).

The bias index matches the official Swin code exactly; it is a
non-persistent buffer (recomputed, never saved), and tables of a different
window size are resized bicubically when a state dict is loaded.
"""
import logging
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from .attention_rows import window_softmax_rows
from .windows import window_partition, window_sdpa

#: Attention logit added between tokens of different shift regions.
MASK_VALUE = -100.


def relative_position_index(window_size: int) -> torch.Tensor:
    """Official Swin relative position index, (w*w, w*w) int64.

    Entry ``(i, j)`` is ``(dy + w - 1) * (2w - 1) + (dx + w - 1)`` with
    ``(dy, dx)`` = position of token ``i`` minus position of token ``j``
    (row-major tokens).
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                       indexing='ij')).flatten(1)  # (2, w*w)
    relative = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)
    return relative[0] * (2 * window_size - 1) + relative[1]


def resize_relative_position_bias_table(table: torch.Tensor,
                                        window_size: int) -> torch.Tensor:
    """Resize a ((2w-1)**2, heads) table to another window, bicubically.

    The table is treated as a (heads, 2w-1, 2w-1) image (as the official
    ``load_pretrained`` does, ``align_corners=False``).

    Args:
        table (Tensor): ((2w - 1)**2, heads).
        window_size (int): Target window w'.

    Returns:
        Tensor: ((2w' - 1)**2, heads), same dtype.
    """
    length, heads = table.shape
    src = int(round(length**0.5))
    if src * src != length:
        raise ValueError(f'relative position bias table of length {length} '
                         'is not a square grid.')
    dst = 2 * window_size - 1
    if src == dst:
        return table
    image = table.float().t().reshape(1, heads, src, src)
    image = F.interpolate(image, size=(dst, dst), mode='bicubic',
                          align_corners=False)
    return image.reshape(heads, dst * dst).t().to(table.dtype).contiguous()


def shifted_window_mask(height: int, width: int, window_size: int,
                        shift_size: int,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """Attention mask of shifted windows on a padded (height, width) map.

    Args:
        height, width (int): Padded map size (multiples of the window).
        window_size (int): Window side w.
        shift_size (int): Cyclic shift s (0 < s < w).
        device (torch.device, optional): Where to build it.

    Returns:
        Tensor: (num_windows, w*w, w*w) float, 0 inside a region and
        ``MASK_VALUE`` across regions.
    """
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_region = ((rows >= height - window_size).long() +
                  (rows >= height - shift_size).long())
    col_region = ((cols >= width - window_size).long() +
                  (cols >= width - shift_size).long())
    regions = (row_region[:, None] * 3 + col_region[None, :]).float()
    regions = window_partition(regions[None, :, :, None], window_size)
    regions = regions.squeeze(-1)  # (nW, w*w)
    different = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(
        different, MASK_VALUE)


def _adapt_loaded_table(module: 'SwinWindowAttention',
                        state_dict: Dict[str, Any], prefix: str,
                        *args: Any) -> None:
    """Load pre-hook: drop a stored (derived) index, unless the module keeps
    it in its state dict (the classification layout), and resize a table of
    another window size, so every load path accepts official and
    other-window state dicts."""
    if not module.index_in_state_dict:
        state_dict.pop(prefix + 'relative_position_index', None)
    key = prefix + 'relative_position_bias_table'
    table = state_dict.get(key)
    own = module.relative_position_bias_table
    if (isinstance(table, torch.Tensor) and table.dim() == 2
            and table.shape != own.shape and table.shape[1] == own.shape[1]):
        state_dict[key] = resize_relative_position_bias_table(
            table, module.window_size)
        print_log(
            f'{key}: resized relative position bias table '
            f'{tuple(table.shape)} -> {tuple(own.shape)} (window '
            f'{module.window_size}, bicubic)',
            logger='current', level=logging.INFO)


class SwinWindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias on a
    (B, H, W, C) map, with optional cyclic shift.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; any head dim ``C // num_heads``.
        window_size (int): Window side w.
        shift_size (int): Requested cyclic shift (0 or ``w // 2`` on odd
            blocks). It is skipped when ``min(H, W) <= w``, which reproduces
            the official classification model (whose construction-time clamp
            makes such maps a single unshifted window). Default: 0.
        qkv_bias (bool): Bias on the qkv projection. Default: True.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 shift_size: int = 0,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by '
                             f'num_heads {num_heads}.')
        if not 0 <= shift_size < window_size:
            raise ValueError(f'shift_size {shift_size} must be in [0, '
                             f'window_size={window_size}).')
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.scale = (embed_dims // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))
        self.register_buffer(
            'relative_position_index',
            relative_position_index(window_size),
            persistent=False)
        self.index_in_state_dict = False
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.register_load_state_dict_pre_hook(_adapt_loaded_table)

    def keep_index_in_state_dict(self) -> None:
        """Make ``relative_position_index`` a persistent buffer, as in the
        official classification model's state dict (the backbones derive
        it and leave it out)."""
        self.register_buffer('relative_position_index',
                             self.relative_position_index, persistent=True)
        self.index_in_state_dict = True

    def effective_shift(self, height: int, width: int) -> int:
        """The shift used on an (unpadded) height x width map."""
        if min(height, width) <= self.window_size:
            return 0
        return self.shift_size

    def attention_bias(self, height: int, width: int, shift: int,
                       batch: int) -> torch.Tensor:
        """What the window attention adds to its logits on a padded map.

        Args:
            height, width (int): Padded map size (multiples of the window).
            shift (int): The cyclic shift (0: none).
            batch (int): Images in the batch.

        Returns:
            Tensor: The relative position bias, (1, h, w*w, w*w), plus the
            shift mask when shifted, (batch * nW, h, w*w, w*w). (4-D: a 3-D
            mask would send CPU SDPA to its unfused math path.)
        """
        n = self.window_size**2
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)
        if not shift:
            return bias
        mask = shifted_window_mask(height, width, self.window_size, shift,
                                   device=bias.device)
        bias = bias + mask.unsqueeze(1)  # (nW, h, N, N)
        return bias.repeat(batch, 1, 1, 1) if batch > 1 else bias

    def windowed_map(self, x: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """The map the windows partition: (B, H, W, C) zero-padded right and
        bottom to multiples of the window, rolled by ``-shift`` when
        shifted; returned with the shift (0: none)."""
        H, W = x.shape[1:3]
        ws = self.window_size
        shift = self.effective_shift(H, W)
        x = F.pad(x, (0, 0, 0, -W % ws, 0, -H % ws))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        return x, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C), already normalised.

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        x, shift = self.windowed_map(x)
        Hp, Wp = x.shape[1:3]
        out = window_sdpa(self.qkv(x), self.window_size, self.num_heads,
                          self.attention_bias(Hp, Wp, shift, B), self.scale)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return self.proj(out[:, :H, :W])

    #: What :meth:`attention_rows` returns (for the analysis tools).
    attention_kind = 'swin_window_softmax'

    def attention_rows(self, x: torch.Tensor,
                       queries: torch.Tensor) -> torch.Tensor:
        """Softmax weights of the queries over their (shifted) window, with
        the relative position bias and the shift mask, at map positions
        (the cyclic shift rolled back).

        Args:
            x (Tensor): (B, H, W, C), what :meth:`forward` receives.
            queries (Tensor): Q flat token indices into H*W.

        Returns:
            Tensor: (B, heads, Q, H*W) float32, zero outside the query's
            window. The zero-padded tokens are keys too (their value is the
            qkv bias); their weight is dropped, so rows of windows that
            reach over padding sum to less than 1.
        """
        H, W = x.shape[1:3]
        x, shift = self.windowed_map(x)
        Hp, Wp = x.shape[1:3]
        return window_softmax_rows(self.qkv(x), (H, W), self.window_size,
                                   self.num_heads, queries, scale=self.scale,
                                   bias=self.attention_bias(Hp, Wp, shift, 1),
                                   shift=shift)
