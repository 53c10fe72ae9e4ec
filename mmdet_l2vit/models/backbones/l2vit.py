"""L²ViT backbone for dense prediction."""
import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.model.weight_init import (constant_init, kaiming_init,
                                        trunc_normal_init)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import ConvertedStateDict, match_any
from ...registry import register_into_toolboxes
from ..layers.common import BlockStack, drop_path_rates
from ..layers.l2vit_attention import DENOMINATOR_FLOOR, LinearAttention
from ..layers.l2vit_blocks import Downsample, LGABlock, LWABlock, StemEmbed
from .base import DenseBackbone, check_stage_lists, resolve_arch

#: Block kinds of each ``block_pattern``: ``'L'`` local window attention,
#: ``'G'`` linear global attention with the LCM, by block index ``j``.
BLOCK_PATTERNS = {
    'alternating': lambda j: 'L' if j % 2 == 0 else 'G',
    'local': lambda j: 'L',
    'global': lambda j: 'G',
}


@register_into_toolboxes()
class L2ViT(DenseBackbone):
    """L²ViT: local window attention alternating with linear global attention
    plus a local concentration module.

    A PyTorch implementation of `The Linear Attention Resurrection in Vision
    Transformer <https://arxiv.org/abs/2501.16182>`_, numerically identical
    to the official model, for mmdet and mmsegmentation.

    Every stage reads L, G, L, G, ...: even blocks are local window attention
    (:class:`LWABlock`), odd blocks linear global attention with the LCM
    (:class:`LGABlock`). Any H x W input works; stage ``i`` has size
    ``ceil(H / 2**(i + 2))`` (right/bottom zero padding, as officially).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'``, ``'base-384'``
            (window 12), or a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (lists of 4) and optionally ``window_size`` (7) and
            ``mlp_ratio`` (4). Default: 'tiny'.
        in_channels (int): Image channels. Default: 3.
        drop_path_rate (float): Stochastic depth rate. Default: 0.1.
        lcm_kernel_size (int): Ablation switch: kernel of the LCM's two
            depthwise convs (official 7; any odd size, e.g. 3 or
            5); ``0`` removes the LCM branch and its ``norm3``.
            Default: 7.
        block_pattern (str): Ablation switch: ``'alternating'`` (official
            L, G, L, G ...), ``'local'`` (every block local window
            attention) or ``'global'`` (every block linear global attention
            with the LCM). Default: 'alternating'.
        softmax_stages (Sequence[int]): Ablation switch: stages whose
            global blocks use softmax attention over all tokens instead of
            linear attention (no ``temperature``; quadratic in the tokens,
            e.g. ``(3, )`` where they are few). Default: ().
        denominator_floor (float, optional): Ablation switch: the linear
            attention's denominator floor (official 100); ``None`` is the
            ordinary normalisation (``+ 1e-6``). Default: 100.
        out_indices, frozen_stages, norm_eval, with_cp, pretrained,
            compile, inference: the backbone contract, see
            :class:`~mmdet_l2vit.models.backbones.base.DenseBackbone`.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH)`` loads an official classification checkpoint
            (e.g. ``L2ViT-Tiny-checkpoint-best-ema.pth``) as released.

    The defaults of the ablation switches are the official model (and only
    then does float32 CPU inference run in the CPU inference engine; other
    settings run the reference modules). A switch changes the parameters
    only where it must (LCM convs, ``norm3``, ``temperature``, the kinds of
    blocks); a checkpoint whose keys show another setting is refused with
    the switch to set.

    Examples:
        >>> import torch
        >>> from mmdet_l2vit import L2ViT
        >>> model = L2ViT(arch='tiny').eval()
        >>> outs = model(torch.rand(1, 3, 97, 131))
        >>> [tuple(o.shape) for o in outs]
        [(1, 96, 25, 33), (1, 192, 13, 17), (1, 384, 7, 9), (1, 768, 4, 5)]
    """

    family = 'L2ViT'
    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': dict(embed_dims=[96, 192, 384, 768], depths=[2, 2, 6, 2],
                     num_heads=[3, 6, 12, 24]),
        'small': dict(embed_dims=[96, 192, 384, 768], depths=[2, 2, 18, 2],
                      num_heads=[3, 6, 12, 24]),
        'base': dict(embed_dims=[128, 256, 512, 1024], depths=[2, 2, 18, 2],
                     num_heads=[4, 8, 16, 32]),
        'base-384': dict(embed_dims=[128, 256, 512, 1024],
                         depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                         window_size=12),
    }
    arch_required = ('embed_dims', 'depths', 'num_heads')
    arch_defaults: Dict[str, Any] = dict(window_size=7, mlp_ratio=4.)
    official_switches: Dict[str, Any] = dict(
        lcm_kernel_size=7, block_pattern='alternating', softmax_stages=(),
        denominator_floor=DENOMINATOR_FLOOR)
    #: Layer-wise lr decay: three blocks to a layer id, the ConvNeXt map of
    #: the official layer-decay constructor (see ``get_layer_depth``).
    blocks_per_layer_id = 3

    def __init__(self,
                 arch: Union[str, Dict[str, Any]] = 'tiny',
                 in_channels: int = 3,
                 drop_path_rate: float = 0.1,
                 lcm_kernel_size: int = 7,
                 block_pattern: str = 'alternating',
                 softmax_stages: Sequence[int] = (),
                 denominator_floor: Optional[float] = DENOMINATOR_FLOOR,
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
        dims = self.embed_dims = list(self.arch_settings['embed_dims'])
        depths = self.depths = list(self.arch_settings['depths'])
        heads = self.num_heads = list(self.arch_settings['num_heads'])
        self.window_size = self.arch_settings['window_size']
        mlp_ratio = self.arch_settings['mlp_ratio']
        self.in_channels = in_channels
        self._check_switches(lcm_kernel_size, block_pattern, softmax_stages)
        self.lcm_kernel_size = lcm_kernel_size
        self.block_pattern = block_pattern
        self.softmax_stages = tuple(sorted(softmax_stages))
        self.denominator_floor = denominator_floor
        kind_of = BLOCK_PATTERNS[block_pattern]

        self.downsample_layers = nn.ModuleList([StemEmbed(in_channels,
                                                          dims[0])])
        for i in range(1, self.num_stages):
            self.downsample_layers.append(Downsample(dims[i - 1], dims[i]))
        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            global_attention = 'softmax' if i in self.softmax_stages \
                else 'linear'
            self.stages.append(
                BlockStack([
                    LWABlock(dims[i], heads[i], self.window_size, mlp_ratio,
                             rates[first + j]) if kind_of(j) == 'L' else
                    LGABlock(dims[i], heads[i], mlp_ratio, rates[first + j],
                             lcm_kernel_size, global_attention,
                             denominator_floor) for j in range(depth)
                ]))
        self._add_output_norms()
        self._finish_build()

    def _check_arch(self, arch: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
        settings = resolve_arch(arch, self.arch_zoo, self.arch_required,
                                self.arch_defaults, 'L2ViT')
        check_stage_lists(settings, self.arch_required, self.num_stages,
                          'L2ViT')
        for dims, heads in zip(settings['embed_dims'],
                               settings['num_heads']):
            if dims % heads:
                raise ValueError(f'L2ViT: embed_dims {dims} is not divisible '
                                 f'by num_heads {heads}.')
        if settings['embed_dims'][0] % 2:
            raise ValueError('L2ViT: embed_dims[0] must be even (the conv '
                             'stem has embed_dims[0] // 2 hidden channels).')
        if not isinstance(settings['window_size'],
                          int) or settings['window_size'] < 1:
            raise ValueError('L2ViT: window_size must be a positive int.')
        return settings

    def _check_switches(self, lcm_kernel_size: int, block_pattern: str,
                        softmax_stages: Sequence[int]) -> None:
        if not isinstance(lcm_kernel_size, int) or lcm_kernel_size < 0 or (
                lcm_kernel_size and lcm_kernel_size % 2 == 0):
            raise ValueError('L2ViT: lcm_kernel_size must be an odd kernel '
                             '(3, 5, 7) or 0 (no LCM), got '
                             f'{lcm_kernel_size!r}.')
        if block_pattern not in BLOCK_PATTERNS:
            raise ValueError(f'L2ViT: unknown block_pattern '
                             f'{block_pattern!r}; choose one of '
                             f'{sorted(BLOCK_PATTERNS)}.')
        if not all(isinstance(i, int) and 0 <= i < self.num_stages
                   for i in softmax_stages):
            raise ValueError('L2ViT: softmax_stages must be stage indices in '
                             f'[0, {self.num_stages}), got '
                             f'{softmax_stages!r}.')

    @classmethod
    def switches_of_state_dict(
            cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """The ablation switches an official-layout state dict shows:
        ``block_pattern`` (where every stage agrees), ``lcm_kernel_size``
        and ``softmax_stages`` (where it has global blocks).
        ``denominator_floor`` changes no parameter and is not shown."""
        kinds, kernels, softmax, linear = [], set(), set(), set()
        for i in range(cls.num_stages):
            depth = 1 + max((int(k.split('.')[2]) for k in state_dict
                             if k.startswith(f'stages.{i}.')), default=-1)
            for j in range(depth):
                prefix = f'stages.{i}.{j}.'
                is_local = f'{prefix}cpe.1.proj.weight' in state_dict
                kinds.append((j, 'L' if is_local else 'G'))
                if is_local:
                    continue
                conv = state_dict.get(f'{prefix}local_mp.conv1.weight')
                kernels.add(0 if conv is None else conv.shape[-1])
                has_temperature = f'{prefix}attn.temperature' in state_dict
                (linear if has_temperature else softmax).add(i)
        switches: Dict[str, Any] = {}
        patterns = [
            name for name, kind_of in BLOCK_PATTERNS.items()
            if all(kind_of(j) == kind for j, kind in kinds)
        ]
        if kinds and patterns:
            switches['block_pattern'] = patterns[0]
        if len(kernels) == 1:
            switches['lcm_kernel_size'] = kernels.pop()
        if softmax or linear:
            switches['softmax_stages'] = tuple(sorted(softmax))
        return switches

    # ---------------------------------------------------------------- stages
    def stage_input(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        return self.downsample_layers[stage](x)

    def stage(self, stage: int) -> nn.Module:
        return self.stages[stage]

    def stage_input_modules(self, stage: int) -> List[nn.Module]:
        return [self.downsample_layers[stage]]

    # ----------------------------------------------------------- init / load
    def _init_from_scratch(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, nn.Conv2d):
                kaiming_init(module, mode='fan_out', nonlinearity='relu',
                             bias=0., distribution='normal')
            elif isinstance(module, (nn.LayerNorm, _BatchNorm)):
                constant_init(module, val=1., bias=0.)
        for stage, heads in zip(self.stages, self.num_heads):
            for block in stage:
                if isinstance(block.attn, LinearAttention):
                    head_dims = block.norm1.normalized_shape[0] // heads
                    nn.init.constant_(block.attn.temperature, head_dims**-0.5)

    def convert_official_state_dict(
            self, state_dict: Dict[str, Any]) -> ConvertedStateDict:
        """Official classification layout -> this backbone.

        Drops the classifier (``head.*``) and its final ``norm.*`` (the
        official detector also starts its output norms at identity), keeps
        everything else 1:1 (BN running statistics included) and creates
        ``norm{i}`` (weight 1, bias 0) for each output index.
        """
        dropped = [k for k in state_dict if match_any(k, ('head.', 'norm.'))]
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
        """Recover ``arch`` (dims, depths, heads) from official key shapes.

        The window size is not stored in a checkpoint; 7 is assumed.
        """
        try:
            dims = [state_dict['downsample_layers.0.norm.weight'].shape[0]] + [
                state_dict[f'downsample_layers.{i}.proj.weight'].shape[0]
                for i in range(1, cls.num_stages)
            ]
        except KeyError as e:
            raise ValueError(f'not an L2ViT state dict (no {e})') from None
        depths, heads = [], []
        for i in range(cls.num_stages):
            blocks = {
                int(k.split('.')[2])
                for k in state_dict if k.startswith(f'stages.{i}.')
            }
            depths.append(max(blocks) + 1 if blocks else 0)
            temperature = state_dict.get(f'stages.{i}.1.attn.temperature')
            heads.append(temperature.shape[0] if temperature is not None else
                         max(1, math.ceil(dims[i] / 32)))
        return dict(embed_dims=dims, depths=depths, num_heads=heads)

    # -------------------------------------------------------------- training
    def _stage_modules(self, stage: int) -> List[nn.Module]:
        if stage < 0:
            return [self.downsample_layers[0]]
        modules: List[nn.Module] = [self.stages[stage]]
        if stage > 0:
            modules.append(self.downsample_layers[stage])
        if stage in self.out_indices:
            modules.append(getattr(self, f'norm{stage}'))
        return modules
