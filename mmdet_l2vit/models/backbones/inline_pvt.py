"""InLine-PVT backbone for dense prediction."""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model.weight_init import constant_init, trunc_normal_init
from torch import nn

from mmengine.utils import to_2tuple

from ...checkpoint import ConvertedStateDict, match_any
from ...registry import register_into_toolboxes
from ..layers.common import BlockStack, Mlp, build_drop_path, drop_path_rates
from ..layers.inline_attention import (KERNEL_FUNCS, InLineAttention,
                                       local_residual_shown)
from .base import DenseBackbone, check_stage_lists, resolve_arch


class PVTPatchEmbed(nn.Module):
    """Non-overlapping patch embedding: conv (kernel = stride = patch) then
    LayerNorm (eps 1e-5). Sizes not divisible by the patch are floored (edge
    pixels dropped), as officially.

    Args:
        in_channels (int): Input channels.
        embed_dims (int): Output channels.
        patch_size (int): Patch side (4 for the stem, 2 after).
    """

    def __init__(self, in_channels: int, embed_dims: int,
                 patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size,
                              stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H // p, W // p, C) channels-last."""
        # A channels-last input gives a channels-last conv output, whose
        # (B, H, W, C) permute the LayerNorm reads without a copy.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.permute(0, 2, 3, 1))


class InLinePVTBlock(nn.Module):
    """Pre-norm block ``x += attn(norm1(x)); x += mlp(norm2(x))`` with global
    InLine attention (``q``/``kv`` projections) and LayerNorm eps 1e-6.

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        mlp_ratio (float): MLP hidden ratio.
        drop_path (float): Stochastic depth rate.
        kernel_func (str): InLine kernel map. Default: 'identity'.
        injective (bool): Injective normalisation. Default: True.
        local_residual (bool): The dynamic local residual. Default: True.
    """

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float,
                 drop_path: float, kernel_func: str = 'identity',
                 injective: bool = True, local_residual: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = InLineAttention(embed_dims, num_heads, qkv_layout='q_kv',
                                    kernel_func=kernel_func,
                                    injective=injective,
                                    local_residual=local_residual)
        self.drop_path = build_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


#: Widths shared by every released InLine-PVT (head dim 32).
_PVT_WIDTHS = dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16],
                   mlp_ratios=[8, 8, 4, 4])


@register_into_toolboxes()
class InLinePVT(DenseBackbone):
    """InLine-PVT: a PVT-v1 pyramid whose every attention is global InLine
    attention (injective linear attention with a dynamic local residual).

    A PyTorch implementation of `Bridging the Divide: Reconsidering Softmax
    and Linear Attention <https://arxiv.org/abs/2412.06590>`_ (InLine),
    numerically identical to the official classification model at 224, for
    mmdet and mmsegmentation.

    Dense-prediction changes (see ``docs/inline_dense_design.md``): each
    stage's absolute position embedding is resized (bilinear,
    ``align_corners=False``) from **its own** stored grid whenever the
    runtime grid differs (the official code compares every stage with stage
    1's token count and crashes e.g. at 448x448); no output norms by default
    (the official model has none). Patch embeddings floor: stage ``i`` has
    size ``floor(H / 2**(i + 2))`` for inputs of at least 32x32.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'medium'``, ``'large'``
            or a dict with ``embed_dims``, ``depths``, ``num_heads`` and
            ``mlp_ratios`` (lists of 4). Any head dim. Default: 'tiny'.
        in_channels (int): Image channels. Default: 3.
        pretrain_img_size (int | tuple[int]): Image size the position
            embeddings are stored for (224 in the official checkpoints).
            Default: 224.
        drop_path_rate (float): Stochastic depth rate. Default: 0.1.
        kernel_func (str): Ablation switch: InLine kernel map of q and k
            (``'identity'``, official; ``'relu'``, ``'leakyrelu'``,
            ``'exp'``). Default: 'identity'.
        injective (bool): Ablation switch: injective normalisation
            (official); ``False`` is ordinary division-normalised linear
            attention (pair it with a non-negative ``kernel_func``).
            Default: True.
        local_residual (bool): Ablation switch: the dynamic local residual
            (official); ``False`` removes it and its ``attn.residual``
            parameters. Default: True.
        out_norms (bool): Add LayerNorms ``norm{i}`` (eps 1e-6) on the
            outputs; they are new parameters. Default: False.
        out_indices, frozen_stages, norm_eval, with_cp, pretrained,
            compile, inference: the backbone contract, see
            :class:`~mmdet_l2vit.models.backbones.base.DenseBackbone`.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH)`` loads an official InLine-PVT classification
            checkpoint as released.

    Examples:
        >>> import torch
        >>> from mmdet_l2vit import InLinePVT
        >>> model = InLinePVT(arch='tiny').eval()
        >>> outs = model(torch.rand(1, 3, 97, 131))
        >>> [tuple(o.shape) for o in outs]
        [(1, 64, 24, 32), (1, 128, 12, 16), (1, 320, 6, 8), (1, 512, 3, 4)]
    """

    family = 'InLinePVT'
    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': dict(_PVT_WIDTHS, depths=[2, 2, 2, 2]),
        'small': dict(_PVT_WIDTHS, depths=[3, 4, 6, 3]),
        'medium': dict(_PVT_WIDTHS, depths=[3, 4, 18, 3]),
        'large': dict(_PVT_WIDTHS, depths=[3, 8, 27, 3]),
    }
    arch_required = ('embed_dims', 'depths', 'num_heads', 'mlp_ratios')
    #: Patch size of each stage's embedding.
    patch_sizes = (4, 2, 2, 2)
    min_input_size = 32
    official_switches: Dict[str, Any] = dict(injective=True,
                                             local_residual=True)

    def __init__(self,
                 arch: Union[str, Dict[str, Any]] = 'tiny',
                 in_channels: int = 3,
                 pretrain_img_size: Union[int, Sequence[int]] = 224,
                 drop_path_rate: float = 0.1,
                 kernel_func: str = 'identity',
                 injective: bool = True,
                 local_residual: bool = True,
                 out_norms: bool = False,
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
            raise ValueError(f'InLinePVT: unknown kernel_func {kernel_func!r}'
                             f'; choose one of {sorted(KERNEL_FUNCS)}.')
        dims = self.embed_dims = list(self.arch_settings['embed_dims'])
        depths = self.depths = list(self.arch_settings['depths'])
        heads = self.num_heads = list(self.arch_settings['num_heads'])
        mlp_ratios = list(self.arch_settings['mlp_ratios'])
        self.in_channels = in_channels
        self.out_norms = out_norms
        self.kernel_func = kernel_func
        self.injective = injective
        self.local_residual = local_residual

        # Stored position-embedding grid of each stage (56, 28, 14, 7 at 224).
        grid = to_2tuple(pretrain_img_size)
        if len(grid) != 2:
            raise ValueError(f'InLinePVT: pretrain_img_size must be an int '
                             f'or (H, W), got {pretrain_img_size!r}.')
        self.pos_grids: List[Tuple[int, int]] = []
        for patch in self.patch_sizes:
            grid = (grid[0] // patch, grid[1] // patch)
            if min(grid) < 1:
                raise ValueError(f'InLinePVT: pretrain_img_size '
                                 f'{pretrain_img_size} is smaller than 32.')
            self.pos_grids.append(grid)

        rates = drop_path_rates(drop_path_rate, depths)
        for i in range(self.num_stages):
            gh, gw = self.pos_grids[i]
            self.register_parameter(
                f'pos_embed{i + 1}',
                nn.Parameter(torch.zeros(1, gh * gw, dims[i])))
        for i in range(self.num_stages):
            self.add_module(
                f'patch_embed{i + 1}',
                PVTPatchEmbed(in_channels if i == 0 else dims[i - 1], dims[i],
                              self.patch_sizes[i]))
            first = sum(depths[:i])
            self.add_module(
                f'block{i + 1}',
                BlockStack([
                    InLinePVTBlock(dims[i], heads[i], mlp_ratios[i],
                                   rates[first + j], kernel_func, injective,
                                   local_residual)
                    for j in range(depths[i])
                ]))
        if out_norms:
            self._add_output_norms(eps=1e-6)
        self._finish_build()

    def _check_arch(self, arch: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
        settings = resolve_arch(arch, self.arch_zoo, self.arch_required, {},
                                'InLinePVT')
        check_stage_lists(settings, ('embed_dims', 'depths', 'num_heads'),
                          self.num_stages, 'InLinePVT')
        ratios = settings['mlp_ratios']
        if (not isinstance(ratios, (list, tuple))
                or len(ratios) != self.num_stages or not all(
                    isinstance(r, (int, float)) and r > 0 for r in ratios)):
            raise ValueError('InLinePVT: arch[\'mlp_ratios\'] must be '
                             f'{self.num_stages} positive numbers, got '
                             f'{ratios!r}.')
        for dims, heads in zip(settings['embed_dims'],
                               settings['num_heads']):
            if dims % heads:
                raise ValueError(f'InLinePVT: embed_dims {dims} is not '
                                 f'divisible by num_heads {heads}.')
        return settings

    # ---------------------------------------------------------------- forward
    def stage_pos_embed(self, stage: int, height: int,
                        width: int) -> torch.Tensor:
        """Stage ``stage``'s position embedding for a ``height x width``
        grid, as a (1, height, width, C) map.

        Resized bilinearly (``align_corners=False``, no antialias) from the
        stage's own stored grid when the sizes differ; used as stored
        otherwise (a same-size resize is an exact identity, so this equals
        the official model wherever the official rule does not fail).
        """
        pos = getattr(self, f'pos_embed{stage + 1}')
        gh, gw = self.pos_grids[stage]
        pos = pos.view(1, gh, gw, -1)
        if (height, width) == (gh, gw):
            return pos
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(height, width),
                            mode='bilinear', align_corners=False)
        return pos.permute(0, 2, 3, 1)

    def stage_input(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        if stage > 0:
            x = x.permute(0, 3, 1, 2)  # NCHW view of the previous map
        x = getattr(self, f'patch_embed{stage + 1}')(x)
        return x + self.stage_pos_embed(stage, x.shape[1], x.shape[2])

    def stage(self, stage: int) -> nn.Module:
        return getattr(self, f'block{stage + 1}')

    def stage_input_modules(
            self, stage: int) -> List[Union[nn.Module, nn.Parameter]]:
        return [getattr(self, f'patch_embed{stage + 1}'),
                getattr(self, f'pos_embed{stage + 1}')]

    # ----------------------------------------------------------- init / load
    def _init_from_scratch(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.LayerNorm):
                constant_init(module, val=1., bias=0.)
        for i in range(self.num_stages):
            nn.init.trunc_normal_(getattr(self, f'pos_embed{i + 1}'), std=.02)

    def convert_official_state_dict(
            self, state_dict: Dict[str, Any]) -> ConvertedStateDict:
        """Official classification layout -> this backbone.

        Drops the classifier ``head.*``; keeps everything else 1:1 (the
        stored position embeddings are resized at runtime). A position
        embedding stored for another (square) grid is resized once here to
        this model's ``pretrain_img_size`` grid. Creates ``norm{i}`` (1/0)
        when ``out_norms`` is on.
        """
        dropped = [k for k in state_dict if match_any(k, ('head.', ))]
        converted = {
            k: v
            for k, v in state_dict.items() if k not in dropped
        }
        kept = list(converted)
        for i in range(self.num_stages):
            key = f'pos_embed{i + 1}'
            pos = converted.get(key)
            if isinstance(pos, torch.Tensor):
                converted[key] = self._fit_pos_embed(key, pos, i)
        created = self._create_output_norm_keys(converted)
        return ConvertedStateDict(converted, kept, dropped, created)

    def _fit_pos_embed(self, key: str, pos: torch.Tensor,
                       stage: int) -> torch.Tensor:
        own = getattr(self, key)
        side = int(round(pos.shape[1]**0.5)) if pos.dim() == 3 else 0
        if (pos.shape == own.shape or pos.dim() != 3
                or pos.shape[2] != own.shape[2]
                or side * side != pos.shape[1]):
            return pos  # equal, or a mismatch the strict loader reports
        gh, gw = self.pos_grids[stage]
        resized = F.interpolate(
            pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2),
            size=(gh, gw), mode='bilinear', align_corners=False)
        print_log(f'InLinePVT: resized {key} from a {side}x{side} to a '
                  f'{gh}x{gw} grid (bilinear).', logger='current',
                  level=logging.INFO)
        return resized.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(
            pos.dtype)

    @classmethod
    def infer_arch_from_state_dict(
            cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """Recover ``arch`` (dims, depths, heads, MLP ratios) from official
        key shapes (heads from the grouped kernel predictor)."""
        dims, depths, heads, ratios = [], [], [], []
        for i in range(1, cls.num_stages + 1):
            try:
                dim = state_dict[f'patch_embed{i}.proj.weight'].shape[0]
                head_dims = state_dict[
                    f'block{i}.0.attn.residual.0.weight'].shape[1]
                hidden = state_dict[f'block{i}.0.mlp.fc1.weight'].shape[0]
            except KeyError as e:
                raise ValueError(
                    f'not an InLine-PVT state dict (no {e})') from None
            blocks = {
                int(k.split('.')[1])
                for k in state_dict if k.startswith(f'block{i}.')
            }
            dims.append(dim)
            depths.append(max(blocks) + 1)
            heads.append(dim // head_dims)
            ratio = hidden / dim
            ratios.append(int(ratio) if ratio.is_integer() else ratio)
        return dict(embed_dims=dims, depths=depths, num_heads=heads,
                    mlp_ratios=ratios)

    # -------------------------------------------------------------- training
    @classmethod
    def switches_of_state_dict(
            cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """``local_residual`` as the keys show it (``injective`` changes no
        parameter)."""
        prefixes = [
            k[:-len('kv.weight')] for k in state_dict
            if k.endswith('.attn.kv.weight')
        ]
        return local_residual_shown(state_dict, prefixes)

    def _stage_modules(self, stage: int) -> List[nn.Module]:
        if stage < 0:
            return [self.patch_embed1]
        modules: List[nn.Module] = [getattr(self, f'block{stage + 1}')]
        if stage > 0:
            modules.append(getattr(self, f'patch_embed{stage + 1}'))
        if self.out_norms and stage in self.out_indices:
            modules.append(getattr(self, f'norm{stage}'))
        return modules

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        # The position embeddings are parameters of the backbone itself:
        # pos_embed1 belongs to the stem, pos_embed{i+1} to stage i >= 1.
        for stage in range(-1, self.frozen_stages):
            if stage != 0:
                getattr(self, f'pos_embed{max(stage, 0) + 1}'
                        ).requires_grad = False
