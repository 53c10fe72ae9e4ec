"""Layer-wise learning-rate decay for detectors and segmentors.

mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` accept only
ConvNeXt (and BEiT/MAE) backbones and ignore ``custom_keys``; mmpretrain's
asks the whole model for ``get_layer_depth``, which a detector or segmentor
does not have. :class:`BackboneLayerDecayOptimWrapperConstructor` asks the
model's **backbone** (every mmdet_l2vit backbone, and any backbone with
mmpretrain's ``get_layer_depth(param_name, prefix)``) and keeps every
``paramwise_cfg`` rule of mmengine's default constructor.
"""
import logging
from collections import OrderedDict
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple, Union

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ..models.backbones.base import DECAY_TYPES
from ..registry import register_into_toolboxes

#: ``get_layer_depth`` bound to a model: parameter name -> (id, num_layers).
LayerDepthFn = Callable[[str], Tuple[int, int]]


@register_into_toolboxes('OPTIM_WRAPPER_CONSTRUCTORS')
class BackboneLayerDecayOptimWrapperConstructor(
        DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with layer-wise learning-rate decay
    over the model's backbone.

    Every parameter gets the learning rate

    .. math::

        lr = base\\_lr \\times lr\\_mult \\times
             decay\\_rate^{\\,num\\_layers - 1 - layer\\_id}

    where ``(layer_id, num_layers) = model.backbone.get_layer_depth(name,
    'backbone.')``: the stem is layer 0, the neck and heads (all parameters
    outside ``backbone.``) are layer ``num_layers - 1`` and keep ``base_lr``
    (see the backbones' ``get_layer_depth`` for their ids), and ``lr_mult``
    is 1 unless a ``custom_keys`` entry sets it. Weight decay is not scaled
    by the layer: every rule of mmengine's
    :class:`~mmengine.optim.DefaultOptimWrapperConstructor` applies
    unchanged (``custom_keys`` with ``lr_mult`` / ``decay_mult``,
    ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``,
    ``bias_lr_mult``, ``dwconv_decay_mult``, frozen parameters skipped).
    The official L²ViT layer-decay rule "no weight decay for 1-D parameters
    and biases" is ``flat_decay_mult=0.``. The resulting groups are logged
    once, as one table by layer (mmengine's own per-parameter
    ``paramwise_options`` lines, printed before it, show ``lr`` before the
    layer scale).

    Each parameter group also carries ``layer_id`` and ``lr_scale``
    (``decay_rate ** (num_layers - 1 - layer_id)``). Parameter schedulers
    scale every group's own ``lr``, so the decay survives warm-up, steps
    and poly schedules.

    ``paramwise_cfg`` keys of its own (the names of mmdet's and mmseg's
    constructors):

    - ``decay_rate`` (float, required): in (0, 1].
    - ``decay_type`` (str): ``'layer_wise'`` (default) or ``'stage_wise'``.
    - ``num_layers`` (int, optional): mmdet's meaning, the number of layer
      ids between the stem and the head (``num_layers - 2`` above). The
      backbone determines it; when given it must agree (a check that the
      config matches the architecture).

    Args:
        optim_wrapper_cfg (dict): The optimizer wrapper config, with
            ``optimizer`` (its ``lr`` is ``base_lr``).
        paramwise_cfg (dict): As above.

    Examples:
        >>> optim_wrapper = dict(
        ...     type='OptimWrapper',
        ...     constructor='BackboneLayerDecayOptimWrapperConstructor',
        ...     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        ...     paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise',
        ...                        flat_decay_mult=0.))
    """

    def __init__(self,
                 optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.decay_rate, self.decay_type, self.num_layers = \
            self._decay_settings()

    def _decay_settings(self) -> Tuple[float, str, Optional[int]]:
        """Read and check ``decay_rate``, ``decay_type``, ``num_layers``."""
        name = type(self).__name__
        cfg = self.paramwise_cfg
        if 'layer_decay_rate' in cfg:
            raise ValueError(f'{name}: paramwise_cfg takes decay_rate (the '
                             "mmdet/mmseg name), not mmpretrain's "
                             'layer_decay_rate.')
        rate = cfg.get('decay_rate')
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'{name}: paramwise_cfg.decay_rate must be a '
                             f'number in (0, 1], got {rate!r}.')
        decay_type = cfg.get('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'{name}: paramwise_cfg.decay_type must be one '
                             f'of {DECAY_TYPES}, got {decay_type!r}.')
        num_layers = cfg.get('num_layers')
        if num_layers is not None and not isinstance(num_layers, int):
            raise TypeError(f'{name}: paramwise_cfg.num_layers must be an int'
                            f' or absent, got {num_layers!r}.')
        if self.base_lr is None:
            raise ValueError(f'{name}: optimizer.lr must be set (it is '
                             'base_lr).')
        return float(rate), decay_type, num_layers

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None
                   ) -> None:
        """Add the parameters of ``module`` with mmengine's rules; on the
        whole model (``prefix == ''``) then scale each group's ``lr`` by its
        layer and log the groups.

        Args:
            params (list[dict]): Parameter groups, extended in place.
            module (nn.Module): The model, or a submodule while recursing.
            prefix (str): Name of ``module`` in the model.
            is_dcn_module (float, optional): As in mmengine.
        """
        if prefix:  # recursing into a submodule: mmengine's rules only
            super().add_params(params, module, prefix, is_dcn_module)
            return
        layer_depth = self._layer_depth_fn(module)
        num_layers = self._num_layers(layer_depth)
        first = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        names = {id(p): name for name, p in module.named_parameters()}
        groups = params[first:]
        for group in groups:
            (param, ) = group['params']
            self._scale_lr(group, layer_depth(names[id(param)]))
        print_log(self._groups_table(groups, names, num_layers),
                  logger='current', level=logging.INFO)

    def _layer_depth_fn(self, model: nn.Module) -> LayerDepthFn:
        """``model.backbone.get_layer_depth`` with the ``'backbone.'``
        prefix (and the decay type where it is not the default)."""
        backbone = getattr(model, 'backbone', None)
        get_layer_depth = getattr(backbone, 'get_layer_depth', None)
        if get_layer_depth is None:
            found = ('has no backbone' if backbone is None else
                     f'has a {type(backbone).__name__} backbone without '
                     'get_layer_depth')
            raise NotImplementedError(
                f'{type(self).__name__} needs '
                '`model.backbone.get_layer_depth(param_name, prefix)` (the '
                f'mmpretrain API), but the {type(model).__name__} model '
                f'{found}. Use an mmdet_l2vit backbone (L2ViT, InLinePVT, '
                'InLineSwin), give the backbone a get_layer_depth method, or '
                'drop `constructor` (and the decay keys of paramwise_cfg) '
                'from optim_wrapper.')
        if self.decay_type == 'layer_wise':  # also mmpretrain's backbones
            return partial(get_layer_depth, prefix='backbone.')
        return partial(get_layer_depth, prefix='backbone.',
                       decay_type=self.decay_type)

    def _num_layers(self, layer_depth: LayerDepthFn) -> int:
        """The backbone's ``num_layers``, checked against
        ``paramwise_cfg.num_layers``."""
        _, num_layers = layer_depth('')  # a name outside the backbone
        if self.num_layers is not None and self.num_layers != num_layers - 2:
            raise ValueError(
                f'{type(self).__name__}: paramwise_cfg.num_layers='
                f'{self.num_layers}, but this backbone has '
                f'{num_layers - 2} layer ids between the stem and the head '
                f'({self.decay_type}); set num_layers={num_layers - 2} or '
                'leave it out.')
        return num_layers

    def _scale_lr(self, group: dict, depth: Tuple[int, int]) -> None:
        """Multiply the group's learning rate by its layer's scale."""
        layer_id, num_layers = depth
        scale = self.decay_rate**(num_layers - 1 - layer_id)
        group['lr'] = group.get('lr', self.base_lr) * scale
        group['layer_id'] = layer_id
        group['lr_scale'] = scale

    def _groups_table(self, groups: List[dict], names: Dict[int, str],
                      num_layers: int) -> str:
        """One row per (layer, lr, weight decay): the parameter count and
        the first and last parameter name."""
        rows: 'OrderedDict[tuple, List[str]]' = OrderedDict()
        for group in sorted(groups, key=lambda g: g['layer_id']):
            key = (group['layer_id'], group['lr_scale'], group['lr'],
                   group.get('weight_decay', self.base_wd))
            rows.setdefault(key, []).append(names[id(group['params'][0])])
        lines = [
            f'{type(self).__name__}: lr = {self.base_lr:g} * lr_mult * '
            f'{self.decay_rate:g} ** ({num_layers - 1} - layer_id) '
            f'({self.decay_type}; layer 0 = stem, {num_layers - 1} = neck '
            'and heads)',
            f'{"layer":>5}  {"lr_scale":>8}  {"lr":>9}  {"wd":>9}  '
            f'{"tensors":>7}  names'
        ]
        for (layer_id, scale, lr, wd), members in rows.items():
            span = members[0] if len(members) == 1 else \
                f'{members[0]} ... {members[-1]}'
            wd_text = '-' if wd is None else f'{wd:.3g}'
            lines.append(f'{layer_id:>5}  {scale:>8.4f}  {lr:>9.3g}  '
                         f'{wd_text:>9}  {len(members):>7}  {span}')
        return '\n'.join(lines)
