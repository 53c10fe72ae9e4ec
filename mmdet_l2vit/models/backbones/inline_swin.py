"""InLine-Swin backbone for dense prediction."""
import re
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model.weight_init import constant_init, trunc_normal_init
from torch import nn

from ...checkpoint import ConvertedStateDict, match_any
from ...registry import register_into_toolboxes
from ..layers.common import BlockStack, Mlp, build_drop_path, drop_path_rates
from ..layers.inline_attention import (KERNEL_FUNCS, InLineAttention,
                                       local_residual_shown)
from ..layers.swin_window_attention import SwinWindowAttention
from .base import DenseBackbone, check_stage_lists, resolve_arch


def parse_attn_types(attn_types: str, depths: List[int]) -> List[List[str]]:
    """Per-block attention kinds from the official ``ATTN_TYPE`` string.

    One character per stage: ``'I'`` (InLine), ``'S'`` (softmax window) or
    ``'M'`` (mixed); the characters after the stage letters are a number
    ``n``: mixed stages have ``n`` InLine blocks followed by softmax blocks
    (e.g. ``'IIMS2'``).

    Args:
        attn_types (str): E.g. ``'IIIS'``, ``'IISS'``, ``'IIMS2'``.
        depths (list[int]): Blocks per stage.

    Returns:
        list[list[str]]: ``'I'`` or ``'S'`` for each block of each stage.
    """
    num_stages = len(depths)
    match = re.fullmatch(r'([ISM]{%d})(\d*)' % num_stages, attn_types) \
        if isinstance(attn_types, str) else None
    if match is None or ('M' in match[1]) != (match[2] != ''):
        raise ValueError(
            f'attn_types must be {num_stages} letters I/S/M, followed by the '
            "InLine block count of the 'M' stages when there is one (e.g. "
            f"'IIIS', 'IIMS2'); got {attn_types!r}.")
    mixed = int(match[2]) if match[2] else 0
    kinds = []
    for kind, depth in zip(match[1], depths):
        if kind == 'M':
            if mixed > depth:
                raise ValueError(f'attn_types {attn_types!r}: {mixed} InLine '
                                 f'blocks in a stage of depth {depth}.')
            kinds.append(['I'] * mixed + ['S'] * (depth - mixed))
        else:
            kinds.append([kind] * depth)
    return kinds


def format_attn_types(kinds: List[List[str]]) -> str:
    """Inverse of :func:`parse_attn_types` (``ValueError`` if the per-block
    kinds have no official string, e.g. two different mixed counts)."""
    letters, counts = [], set()
    for stage in kinds:
        num_inline = stage.count('I')
        if stage == ['I'] * len(stage):
            letters.append('I')
        elif stage == ['S'] * len(stage):
            letters.append('S')
        elif stage == ['I'] * num_inline + ['S'] * (len(stage) - num_inline):
            letters.append('M')
            counts.add(num_inline)
        else:
            raise ValueError(f'block kinds {stage} are not InLine blocks '
                             'followed by softmax blocks.')
    if len(counts) > 1:
        raise ValueError(f'mixed stages with different InLine block counts '
                         f'{sorted(counts)} cannot be written as attn_types.')
    return ''.join(letters) + ''.join(str(c) for c in counts)


class SwinPatchEmbed(nn.Module):
    """4x4 stride-4 conv then LayerNorm; the input is zero-padded right and
    bottom to a multiple of 4 (Swin-det), so the map is ``ceil(H / 4)``.

    Args:
        in_channels (int): Image channels.
        embed_dims (int): Output channels.
        patch_size (int): Patch side. Default: 4.
    """

    def __init__(self, in_channels: int, embed_dims: int,
                 patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size,
                              stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, ceil(H/4), ceil(W/4), C) channels-last."""
        p = self.patch_size
        pad_b, pad_r = -x.shape[2] % p, -x.shape[3] % p
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        # A channels-last input gives a channels-last conv output, whose
        # (B, H, W, C) permute the LayerNorm reads without a copy.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin 2x2 patch merging; odd sizes are zero-padded by one (Swin-det).

    Neighbours are concatenated in the official order (even row, even col),
    (odd row, even col), (even row, odd col), (odd row, odd col), then
    LayerNorm(4C) and a bias-free Linear(4C -> 2C).

    Args:
        embed_dims (int): Input channels C.
    """

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * embed_dims, 2 * embed_dims, bias=False)
        self.norm = nn.LayerNorm(4 * embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        return self.reduction(self.norm(self.gather_2x2(x)))

    @staticmethod
    def gather_2x2(x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C), even H and W -> (B, H/2, W/2, 4C): the view
        (B, H/2, row parity, W/2, col parity, C) with the channel blocks
        ordered (col parity, row parity), i.e. the official concat order,
        in one copy."""
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)
        return x.reshape(B, H // 2, W // 2, 4 * C)


class InLineSwinBlock(nn.Module):
    """Swin pre-norm block with InLine (global, over the unpadded map) or
    shifted-window softmax attention.

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        kind (str): ``'I'`` (InLine) or ``'S'`` (softmax window).
        window_size (int): Window of softmax blocks.
        shift (bool): Whether a softmax block shifts (odd blocks).
        mlp_ratio (float): MLP hidden ratio.
        drop_path (float): Stochastic depth rate.
        kernel_func (str): InLine kernel map. Default: 'identity'.
        injective (bool): Injective normalisation. Default: True.
        local_residual (bool): The dynamic local residual. Default: True.
    """

    def __init__(self, embed_dims: int, num_heads: int, kind: str,
                 window_size: int, shift: bool, mlp_ratio: float,
                 drop_path: float, kernel_func: str = 'identity',
                 injective: bool = True, local_residual: bool = True) -> None:
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(embed_dims)
        if kind == 'I':
            self.attn = InLineAttention(embed_dims, num_heads,
                                        qkv_layout='qkv',
                                        kernel_func=kernel_func,
                                        injective=injective,
                                        local_residual=local_residual)
        else:
            self.attn = SwinWindowAttention(
                embed_dims, num_heads, window_size,
                shift_size=window_size // 2 if shift else 0)
        self.drop_path = build_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class InLineSwinStage(nn.Module):
    """The blocks of one stage and the patch merging that follows it (the
    backbone takes the stage output before the merging).

    Args:
        blocks (list[nn.Module]): The blocks.
        downsample (nn.Module, optional): Patch merging after the stage.
    """

    def __init__(self, blocks: List[nn.Module],
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.blocks = BlockStack(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> the last block's (B, H, W, C) output."""
        return self.blocks(x)


@register_into_toolboxes()
class InLineSwin(DenseBackbone):
    """InLine-Swin: Swin Transformer with InLine attention (injective linear
    attention with a dynamic local residual) in most blocks.

    A PyTorch implementation of `Bridging the Divide: Reconsidering Softmax
    and Linear Attention <https://arxiv.org/abs/2412.06590>`_ (InLine),
    numerically identical to the official classification model at 224, for
    mmdet and mmsegmentation.

    Dense-prediction design (see ``docs/inline_dense_design.md``): InLine
    blocks attend globally over the whole unpadded map (the official window
    56 is the whole 224 map); softmax blocks are Swin-det windows (pad to a
    multiple of the window, cyclic shift by half a window on odd blocks with
    a runtime mask, relative position bias), the shift being skipped when
    ``min(H, W) <= window`` as the official construction-time clamp does;
    patch embedding and merging pad odd sizes, so stage ``i`` has size
    ``ceil(H / 2**(i + 2))``. Output LayerNorms ``norm{i}`` are new.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` or a dict with
            ``embed_dims`` (int, stage widths C * 2**i), ``depths`` and
            ``num_heads`` (lists of 4), and optionally ``window_size`` (the
            official WINDOW_SIZE, 56; softmax blocks use
            ``max(7, window_size // 8)``), ``attn_types`` (official format,
            e.g. ``'IIIS'``, ``'IIMS2'``) and ``mlp_ratio`` (4).
            Default: 'tiny'.
        in_channels (int): Image channels. Default: 3.
        drop_path_rate (float): Stochastic depth rate. Default: 0.1.
        softmax_window_size (int, optional): Override the window of the
            softmax blocks (checkpoint tables are resized bicubically).
            Default: None (official rule).
        kernel_func (str): Ablation switch: the InLine kernel map of q and
            k, as in :class:`InLinePVT`. Default: 'identity'.
        injective (bool): Ablation switch: injective normalisation of the
            InLine blocks (official), as in :class:`InLinePVT`.
            Default: True.
        local_residual (bool): Ablation switch: the InLine blocks' dynamic
            local residual (official), as in :class:`InLinePVT`.
            Default: True.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH)`` loads an official InLine-Swin classification
            checkpoint as released.
        out_indices, frozen_stages, norm_eval, with_cp, pretrained,
            compile, inference: the backbone contract, see
            :class:`~mmdet_l2vit.models.backbones.base.DenseBackbone`.

    Examples:
        >>> import torch
        >>> from mmdet_l2vit import InLineSwin
        >>> model = InLineSwin(arch='tiny').eval()
        >>> outs = model(torch.rand(1, 3, 97, 131))
        >>> [tuple(o.shape) for o in outs]
        [(1, 96, 25, 33), (1, 192, 13, 17), (1, 384, 7, 9), (1, 768, 4, 5)]
    """

    family = 'InLineSwin'
    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': dict(embed_dims=96, depths=[2, 2, 6, 2],
                     num_heads=[3, 6, 12, 24], attn_types='IIIS'),
        'small': dict(embed_dims=96, depths=[2, 2, 18, 2],
                      num_heads=[3, 6, 12, 24], attn_types='IISS'),
        'base': dict(embed_dims=128, depths=[2, 2, 18, 2],
                     num_heads=[4, 8, 16, 32], attn_types='IIMS2'),
    }
    arch_required = ('embed_dims', 'depths', 'num_heads')
    arch_defaults: Dict[str, Any] = dict(window_size=56, attn_types='IIIS',
                                         mlp_ratio=4.)
    official_switches: Dict[str, Any] = dict(injective=True,
                                             local_residual=True)

    def __init__(self,
                 arch: Union[str, Dict[str, Any]] = 'tiny',
                 in_channels: int = 3,
                 drop_path_rate: float = 0.1,
                 kernel_func: str = 'identity',
                 injective: bool = True,
                 local_residual: bool = True,
                 softmax_window_size: Optional[int] = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 compile: Union[bool, dict] = False,
                 inference: str = 'auto') -> None:
        super().__init__(out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp,
                         pretrained=pretrained, init_cfg=init_cfg,
                         compile=compile, inference=inference)
        self.arch_settings = self._check_arch(arch)
        if kernel_func not in KERNEL_FUNCS:
            raise ValueError(f'InLineSwin: unknown kernel_func '
                             f'{kernel_func!r}; choose one of '
                             f'{sorted(KERNEL_FUNCS)}.')
        base = self.arch_settings['embed_dims']
        dims = self.embed_dims = [base * 2**i for i in range(self.num_stages)]
        depths = self.depths = list(self.arch_settings['depths'])
        heads = self.num_heads = list(self.arch_settings['num_heads'])
        mlp_ratio = self.arch_settings['mlp_ratio']
        self.block_kinds = parse_attn_types(self.arch_settings['attn_types'],
                                            depths)
        if softmax_window_size is None:
            softmax_window_size = max(7,
                                      self.arch_settings['window_size'] // 8)
        elif not isinstance(softmax_window_size,
                            int) or softmax_window_size < 1:
            raise ValueError('InLineSwin: softmax_window_size must be a '
                             f'positive int, got {softmax_window_size!r}.')
        self.softmax_window_size = softmax_window_size
        self.in_channels = in_channels
        self.kernel_func = kernel_func
        self.injective = injective
        self.local_residual = local_residual

        self.patch_embed = SwinPatchEmbed(in_channels, dims[0])
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList()
        for i in range(self.num_stages):
            first = sum(depths[:i])
            blocks = [
                InLineSwinBlock(dims[i], heads[i], kind, softmax_window_size,
                                j % 2 == 1, mlp_ratio, rates[first + j],
                                kernel_func, injective, local_residual)
                for j, kind in enumerate(self.block_kinds[i])
            ]
            downsample = PatchMerging(dims[i]) \
                if i < self.num_stages - 1 else None
            self.layers.append(InLineSwinStage(blocks, downsample))
        self._add_output_norms()
        self._finish_build()

    def _check_arch(self, arch: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
        settings = resolve_arch(arch, self.arch_zoo, self.arch_required,
                                self.arch_defaults, 'InLineSwin')
        check_stage_lists(settings, ('depths', 'num_heads'), self.num_stages,
                          'InLineSwin')
        base = settings['embed_dims']
        if not isinstance(base, int) or base < 1:
            raise ValueError('InLineSwin: arch[\'embed_dims\'] must be a '
                             f'positive int (stage widths are C * 2**i), got '
                             f'{base!r}.')
        for i, heads in enumerate(settings['num_heads']):
            if (base * 2**i) % heads:
                raise ValueError(f'InLineSwin: stage {i} width {base * 2**i}'
                                 f' is not divisible by num_heads {heads}.')
        if not isinstance(settings['window_size'],
                          int) or settings['window_size'] < 1:
            raise ValueError('InLineSwin: window_size must be a positive '
                             'int.')
        parse_attn_types(settings['attn_types'], settings['depths'])
        return settings

    # ---------------------------------------------------------------- forward
    def stage_input(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        if stage == 0:
            return self.patch_embed(x)
        return self.layers[stage - 1].downsample(x)

    def stage(self, stage: int) -> nn.Module:
        return self.layers[stage]

    def stage_input_modules(self, stage: int) -> List[nn.Module]:
        if stage == 0:
            return [self.patch_embed]
        return [self.layers[stage - 1].downsample]

    # ----------------------------------------------------------- init / load
    def _init_from_scratch(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, val=1., bias=0.)
            elif isinstance(module, SwinWindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table,
                                      std=.02)

    #: Tables of another softmax window are resized by the attention's load
    #: pre-hook.
    resized_on_load = ('relative_position_bias_table', )
    #: Official keys with no counterpart here (classifier, derived buffers).
    dropped_patterns = ('head.', 'norm.')
    dropped_suffixes = ('.relative_position_index', '.attn_mask')

    def convert_official_state_dict(
            self, state_dict: Dict[str, Any]) -> ConvertedStateDict:
        """Official classification layout -> this backbone.

        Drops the classifier ``head.*`` and its final ``norm.*``, the derived
        buffers ``*.relative_position_index`` and ``*.attn_mask`` (recomputed
        at runtime), keeps everything else 1:1 (relative-position tables of
        another window are resized when loaded, by the attention's load
        pre-hook) and creates ``norm{i}`` (1/0)
        for each output index.
        """
        dropped = [
            k for k in state_dict if match_any(k, self.dropped_patterns)
            or k.endswith(self.dropped_suffixes)
        ]
        converted = {
            k: v
            for k, v in state_dict.items() if k not in dropped
        }
        kept = list(converted)
        created = self._create_output_norm_keys(converted)
        return ConvertedStateDict(converted, kept, dropped, created)

    @classmethod
    def infer_arch_from_state_dict(
            cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """Recover ``arch`` from official key shapes: widths from the patch
        embedding, block kinds from which keys a block has (``residual``:
        InLine, ``relative_position_bias_table``: softmax), heads from the
        grouped kernel predictor or the bias table, the window from the
        table size (``window_size = 8 * w``, the official rule's inverse)."""
        try:
            base = state_dict['patch_embed.proj.weight'].shape[0]
        except KeyError:
            raise ValueError('not an InLine-Swin state dict (no '
                             "'patch_embed.proj.weight')") from None
        depths, heads, kinds, windows = [], [], [], set()
        for i in range(cls.num_stages):
            prefix = f'layers.{i}.blocks.'
            blocks = sorted({
                int(k[len(prefix):].split('.')[0])
                for k in state_dict if k.startswith(prefix)
            })
            if not blocks:
                raise ValueError(f'not an InLine-Swin state dict (no '
                                 f'{prefix}*)')
            depths.append(len(blocks))
            stage_kinds = []
            for j in blocks:
                attn = f'{prefix}{j}.attn.'
                if attn + 'residual.0.weight' in state_dict:
                    stage_kinds.append('I')
                    head_dims = state_dict[attn + 'residual.0.weight'].shape[1]
                    stage_heads = base * 2**i // head_dims
                else:
                    table = state_dict[attn + 'relative_position_bias_table']
                    stage_kinds.append('S')
                    stage_heads = table.shape[1]
                    windows.add((int(round(table.shape[0]**0.5)) + 1) // 2)
            kinds.append(stage_kinds)
            heads.append(stage_heads)
        hidden = state_dict['layers.0.blocks.0.mlp.fc1.weight'].shape[0]
        if len(windows) > 1:
            raise ValueError(f'softmax blocks with different windows '
                             f'{sorted(windows)}.')
        window = windows.pop() if windows else 7
        if window < 7:
            raise ValueError(f'softmax window {window} < 7 has no official '
                             'WINDOW_SIZE; pass softmax_window_size.')
        return dict(embed_dims=base, depths=depths, num_heads=heads,
                    window_size=8 * window,
                    attn_types=format_attn_types(kinds),
                    mlp_ratio=hidden / base)

    # -------------------------------------------------------------- training
    @classmethod
    def switches_of_state_dict(
            cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """``local_residual`` as the keys of the InLine blocks (no relative
        position bias) show it (``injective`` changes no parameter)."""
        prefixes = [
            k[:-len('qkv.weight')] for k in state_dict
            if k.endswith('.attn.qkv.weight') and
            k[:-len('qkv.weight')] + 'relative_position_bias_table' not in
            state_dict
        ]
        return local_residual_shown(state_dict, prefixes)

    def _stage_modules(self, stage: int) -> List[nn.Module]:
        if stage < 0:
            return [self.patch_embed]
        modules: List[nn.Module] = [self.layers[stage]]
        if stage in self.out_indices:
            modules.append(getattr(self, f'norm{stage}'))
        return modules
