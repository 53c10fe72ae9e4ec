"""What every mmdet_l2vit backbone shares: the mmdet/mmseg backbone contract.

Subclasses build their modules and implement the hooks ``stage_input``,
``stage`` (the stage loop), ``_init_from_scratch``,
``convert_official_state_dict``, ``_stage_modules`` and
``stage_input_modules``. This base class then provides the input check,
``forward`` (the stage loop, output norms, NCHW outputs, and the one choice
between the reference modules and the CPU inference engine), the deprecated
``pretrained`` argument, ``init_cfg=dict(type='Pretrained', ...)`` loading of
official checkpoints (safe reading, conversion, strict key checks, a logged
report), output-norm keys in conversion, ``frozen_stages``, ``norm_eval``,
``with_cp`` and ``get_layer_depth`` (layer-wise learning-rate decay).
"""
import logging
import warnings
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import (CheckpointError, ConvertedStateDict,
                           extract_state_dict, load_state_dict_strictly,
                           read_checkpoint_file)
from ..cpu_inference import cpu_inference_applies, run_cpu_inference
from ..layers.common import BlockStack, channels_last_to_nchw
from ..layers.memory import (cpu_backward_routes,
                             recompute_norms_and_gelus, routes_backward_here,
                             saves_memory_here)

#: Compiled callables of backbones built with ``compile``, kept outside the
#: modules so that deep copies (EMA) and pickling are unaffected.
_COMPILED: 'weakref.WeakKeyDictionary[nn.Module, Any]' = \
    weakref.WeakKeyDictionary()

#: Keys a ``Pretrained`` init_cfg may carry.
PRETRAINED_KEYS = {'type', 'checkpoint', 'checkpoint_key', 'prefix',
                   'map_location', 'trust_pickle'}

#: The ways ``get_layer_depth`` groups the parameters into layers.
DECAY_TYPES = ('layer_wise', 'stage_wise')


def resolve_arch(arch: Union[str, Dict[str, Any]], arch_zoo: Dict[str, Dict],
                 required: Sequence[str], defaults: Dict[str, Any],
                 owner: str) -> Dict[str, Any]:
    """Turn an arch name or dict into a full, validated arch dict.

    Args:
        arch (str | dict): A name in ``arch_zoo`` or a dict with at least
            the ``required`` keys.
        arch_zoo (dict): Known architectures.
        required (Sequence[str]): Keys a custom arch dict must have.
        defaults (dict): Values for optional keys.
        owner (str): Class name, for error messages.

    Returns:
        dict: The architecture settings.
    """
    if isinstance(arch, str):
        name = arch.lower()
        if name not in arch_zoo:
            raise ValueError(f'{owner}: unknown arch {arch!r}; choose one of '
                             f'{sorted(arch_zoo)} or pass a dict with keys '
                             f'{list(required)}.')
        settings = dict(defaults, **arch_zoo[name])
    elif isinstance(arch, dict):
        missing = [k for k in required if k not in arch]
        unknown = [k for k in arch if k not in required and k not in defaults]
        if missing or unknown:
            raise ValueError(
                f'{owner}: malformed arch dict: missing keys {missing}, '
                f'unknown keys {unknown}; required {list(required)}, '
                f'optional {sorted(defaults)}.')
        settings = dict(defaults, **arch)
    else:
        raise TypeError(f'{owner}: arch must be a str or dict, got '
                        f'{type(arch).__name__}.')
    return settings


def check_stage_lists(settings: Dict[str, Any], keys: Sequence[str],
                      num_stages: int, owner: str) -> None:
    """Check that every per-stage list has ``num_stages`` positive ints."""
    for key in keys:
        value = settings[key]
        if (not isinstance(value, (list, tuple)) or len(value) != num_stages
                or not all(isinstance(v, int) and v > 0 for v in value)):
            raise ValueError(f'{owner}: arch[{key!r}] must be {num_stages} '
                             f'positive ints, got {value!r}.')


class DenseBackbone(BaseModule):
    """Base class of the dense-prediction backbones.

    Args:
        out_indices (Sequence[int]): Stages whose outputs are returned.
            Default: (0, 1, 2, 3).
        frozen_stages (int): mmdet meaning: ``0`` freezes the stem, ``k``
            also freezes stages ``0..k-1`` (and their output norms). -1
            freezes nothing. Default: -1.
        norm_eval (bool): Keep BatchNorm layers (L²ViT's stem and LCMs; the
            InLine models have none) in eval mode (frozen running
            statistics) while training. Default: False.
        with_cp (bool): Gradient checkpointing per block. Default: False.
        pretrained (str, optional): Deprecated; use ``init_cfg``.
        init_cfg (dict | list[dict], optional): Initialisation config.
            ``dict(type='Pretrained', checkpoint=PATH)`` loads an official
            classification checkpoint as released, or a converted one.
            Optional keys: ``checkpoint_key`` (e.g. ``'model_ema'``),
            ``trust_pickle`` (read a trusted file with full pickle).
        compile (bool | dict): Run the backbone through ``torch.compile``
            (a dict is passed as its keyword arguments). Default: False.
        inference (str): ``'auto'``: float32 CPU inference (eval mode, no
            autograd, no autocast, not traced or compiled) runs in the CPU
            inference engine (:mod:`..cpu_inference`, equal to the reference
            modules to float32 rounding, faster and leaner); ``'reference'``:
            always run the reference modules. Default: 'auto'.
    """

    #: Family name used in checkpoint messages.
    family = 'backbone'
    num_stages = 4
    #: Smallest input side the backbone accepts.
    min_input_size = 1
    #: Key suffixes whose tensors a load pre-hook resizes to this model.
    resized_on_load: Tuple[str, ...] = ()
    #: The family's ablation switches (constructor arguments stored as
    #: attributes of the same name) at their official values.
    official_switches: Dict[str, Any] = {}
    #: Consecutive blocks of a stage that share one layer id in layer-wise
    #: learning-rate decay (``get_layer_depth``).
    blocks_per_layer_id = 1

    def __init__(self,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 compile: Union[bool, dict] = False,
                 inference: str = 'auto') -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise AssertionError(
                    f'{type(self).__name__}: init_cfg and pretrained cannot '
                    'be set at the same time; use init_cfg=dict('
                    "type='Pretrained', checkpoint=...).")
            if not isinstance(pretrained, str):
                raise TypeError(
                    f'{type(self).__name__}: pretrained must be a str path or '
                    f'None, got {type(pretrained).__name__}.')
            warnings.warn('pretrained is deprecated, please use "init_cfg" '
                          'instead', DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        out_indices = tuple(out_indices)
        if not out_indices or not all(
                isinstance(i, int) and 0 <= i < self.num_stages
                for i in out_indices):
            raise ValueError(f'{type(self).__name__}: out_indices must be '
                             f'stage indices in [0, {self.num_stages}), got '
                             f'{out_indices!r}.')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'{type(self).__name__}: frozen_stages must be '
                             f'in [-1, {self.num_stages}], got '
                             f'{frozen_stages}.')
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f'{type(self).__name__}: compile must be a bool '
                            f'or a dict of torch.compile options, got '
                            f'{type(compile).__name__}.')
        if inference not in ('auto', 'reference'):
            raise ValueError(f'{type(self).__name__}: inference must be '
                             f"'auto' or 'reference', got {inference!r}.")
        self.compile = compile
        self.inference = inference
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

    @property
    def with_cp(self) -> bool:
        """Gradient checkpointing per block (set on every stage)."""
        return self._with_cp

    @with_cp.setter
    def with_cp(self, value: bool) -> None:
        self._with_cp = bool(value)
        for module in self.modules():
            if isinstance(module, BlockStack):
                module.with_cp = self._with_cp

    def _finish_build(self) -> None:
        """End of a subclass ``__init__``: hand ``with_cp`` to the stages
        and freeze ``frozen_stages``."""
        self.with_cp = self._with_cp
        self._freeze_stages()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module, through ``torch.compile`` if ``compile`` is set
        (compiled once, lazily, on the first call)."""
        if not self.compile or torch.compiler.is_compiling():
            return super().__call__(*args, **kwargs)
        compiled = _COMPILED.get(self)
        if compiled is None:
            options = self.compile if isinstance(self.compile, dict) else {}
            compiled = torch.compile(super().__call__, **options)
            _COMPILED[self] = compiled
        return compiled(*args, **kwargs)

    # ---------------------------------------------------------- subclass API
    def stage_input(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """What stage ``stage`` reads: the stem applied to the (B, C, H, W)
        image for stage 0, the downsampling of the previous stage's
        (B, H, W, C) output after; a channels-last (B, H_i, W_i, C_i)
        map."""
        raise NotImplementedError

    def stage(self, stage: int) -> nn.Module:
        """The module running the blocks of stage ``stage``."""
        raise NotImplementedError

    def _init_from_scratch(self) -> None:
        """Initialise every parameter for training from scratch."""
        raise NotImplementedError

    def convert_official_state_dict(
            self, state_dict: Dict[str, Any]) -> ConvertedStateDict:
        """Map an official classification state dict to this layout."""
        raise NotImplementedError

    def optional_keys(self) -> List[str]:
        """Keys (or ``'prefix.'``) a converted checkpoint may carry that this
        configuration does not have: the output norms it does not build."""
        return [
            f'norm{i}.' for i in range(self.num_stages)
            if not hasattr(self, f'norm{i}')
        ]

    def _stage_modules(self, stage: int) -> List[nn.Module]:
        """Modules frozen by ``frozen_stages``: ``-1`` is the stem, ``i`` the
        stage ``i`` (including its output norm, if any)."""
        raise NotImplementedError

    def stage_input_modules(
            self, stage: int) -> List[Union[nn.Module, nn.Parameter]]:
        """What ``stage_input(stage)`` applies (modules, or parameters of
        the backbone itself): the stem for stage 0, the downsampling (and
        position embedding) into stage ``stage`` after."""
        raise NotImplementedError

    @classmethod
    def switches_of_state_dict(
            cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """The ablation switches that a state dict of this layout shows by
        its keys and shapes (those that change no parameter are absent)."""
        return {}

    # ------------------------------------------------------ ablation switches
    def ablation_switches(self) -> Dict[str, Any]:
        """This backbone's value of every ablation switch."""
        return {name: getattr(self, name) for name in self.official_switches}

    def has_official_switches(self) -> bool:
        """Whether every ablation switch is at its official value (the CPU
        inference engine computes only these exactly)."""
        return all(
            getattr(self, name) == value
            for name, value in self.official_switches.items())

    def with_switch_hint(self, error: CheckpointError,
                         state_dict: Dict[str, torch.Tensor]
                         ) -> CheckpointError:
        """``error`` (a state dict that does not fit), with the ablation
        switches to set appended where the state dict's keys show other
        switches than this backbone's.

        Args:
            error (CheckpointError): The strict loader's report.
            state_dict (dict): The state dict, in this backbone's layout.

        Returns:
            CheckpointError: ``error`` itself, or a new one naming each
            switch, the checkpoint's value and this backbone's.
        """
        shown = self.switches_of_state_dict(state_dict)
        own = self.switches_of_state_dict(self.state_dict())
        differ = {
            name: (value, own[name])
            for name, value in shown.items()
            if name in own and own[name] != value
        }
        if not differ:
            return error
        settings = ', '.join(f'{name}={value!r}'
                             for name, (value, _) in differ.items())
        details = '; '.join(f'{name}: checkpoint {value!r}, backbone {mine!r}'
                            for name, (value, mine) in differ.items())
        return CheckpointError(
            f'{error} Its keys show other ablation switches of '
            f'{type(self).__name__} ({details}): build the backbone with '
            f'{settings} to load it.')

    # --------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        name, channels = type(self).__name__, self.in_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(
                f'{name} expects images of shape (B, {channels}, H, W), got '
                f'{tuple(x.shape)}. Convert grayscale images to {channels} '
                'channels (e.g. color_type="color" in LoadImageFromFile) or '
                'set in_channels.')
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f'{name} needs inputs of at least {self.min_input_size}x'
                f'{self.min_input_size} (its patch embeddings floor to '
                f'stride 32), got {tuple(x.shape[-2:])}.')

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Run all stages of the reference modules; return each stage's
        output before the output norms, as channels-last
        ``(B, H_i, W_i, C_i)`` maps."""
        stage_outputs = []
        for i in range(self.num_stages):
            x = self.stage(i)(self.stage_input(i, x))
            stage_outputs.append(x)
        return stage_outputs

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Args: x (Tensor): (B, C, H, W) images.

        Returns:
            tuple[Tensor]: One (B, C_i, H_i, W_i) map per ``out_indices``.
        """
        self._check_input(x)
        if cpu_inference_applies(self, x):
            return run_cpu_inference(self, x)
        with recompute_norms_and_gelus(enabled=saves_memory_here()), \
                cpu_backward_routes(enabled=routes_backward_here(x)):
            stage_outputs = self.forward_stages(x)
            return tuple(
                channels_last_to_nchw(self.output_norm(i)(stage_outputs[i]))
                for i in self.out_indices)

    def output_norm(self, stage: int) -> nn.Module:
        """The output norm ``norm{stage}`` (identity where there is none)."""
        return getattr(self, f'norm{stage}', nn.Identity())

    def _add_output_norms(self, eps: float = 1e-5) -> None:
        """Build ``norm{i}`` (LayerNorm of stage ``i``'s width) for every
        output index."""
        for i in self.out_indices:
            self.add_module(f'norm{i}',
                            nn.LayerNorm(self.embed_dims[i], eps=eps))

    def _create_output_norm_keys(self, state_dict: Dict[str, Any]
                                 ) -> List[str]:
        """Add this model's output norms (weight 1, bias 0) to a converted
        state dict where it lacks them; return the keys created."""
        created = []
        for i in self.out_indices:
            if not hasattr(self, f'norm{i}'):
                continue
            for name, fill in (('weight', torch.ones), ('bias', torch.zeros)):
                key = f'norm{i}.{name}'
                if key not in state_dict:
                    state_dict[key] = fill(self.embed_dims[i])
                    created.append(key)
        return created

    # --------------------------------------------------------------- loading
    def _pretrained_cfg(self) -> Optional[dict]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [
            self.init_cfg
        ]
        found = [c for c in cfgs if isinstance(c, dict)
                 and c.get('type') == 'Pretrained']
        if not found:
            return None
        if len(found) > 1:
            raise ValueError(f'{type(self).__name__}: only one Pretrained '
                             'init_cfg is supported.')
        cfg = found[0]
        unknown = set(cfg) - PRETRAINED_KEYS
        if unknown or 'checkpoint' not in cfg:
            raise ValueError(
                f'{type(self).__name__}: Pretrained init_cfg needs '
                f'`checkpoint` and accepts {sorted(PRETRAINED_KEYS)}; got '
                f'{sorted(cfg)}.')
        return cfg

    def load_pretrained(self, checkpoint: str,
                        checkpoint_key: Optional[str] = None,
                        trust_pickle: bool = False,
                        prefix: Optional[str] = None) -> ConvertedStateDict:
        """Load an official (or converted) checkpoint strictly.

        Args:
            checkpoint (str): Path of the checkpoint file.
            checkpoint_key (str, optional): Entry to take, e.g.
                ``'model_ema'``. Default: ``state_dict``, then ``model``.
            trust_pickle (bool): Read the file with full pickle.
            prefix (str, optional): Keep only keys under this prefix
                (e.g. ``'backbone.'``), stripped.

        Returns:
            ConvertedStateDict: What was kept, dropped and created.
        """
        raw = read_checkpoint_file(checkpoint, trust_pickle=trust_pickle)
        state_dict, source = extract_state_dict(
            raw, checkpoint_key, prefix=prefix)
        converted = self.convert_official_state_dict(state_dict)
        try:
            load_state_dict_strictly(
                self, converted.state_dict,
                source=f"{checkpoint}['{source}']",
                expected_family=self.family,
                allowed_unexpected=self.optional_keys(),
                resized_on_load=self.resized_on_load)
        except CheckpointError as error:
            raise self.with_switch_hint(error, converted.state_dict) from None
        print_log(
            f'{type(self).__name__}: checkpoint {checkpoint} [{source}]: '
            f'{len(converted.kept)} kept, dropped {converted.dropped}, '
            f'created {converted.created}',
            logger='current', level=logging.INFO)
        return converted

    def init_weights(self) -> None:
        """Initialise from scratch, then load a Pretrained checkpoint."""
        cfg = self._pretrained_cfg()
        self._init_from_scratch()
        if cfg is None:
            if self.init_cfg:
                super().init_weights()  # other (non-Pretrained) init_cfgs
            self._is_init = True
            return
        others = [c for c in (self.init_cfg if isinstance(
            self.init_cfg, list) else [self.init_cfg]) if c is not cfg]
        if others:
            saved, self.init_cfg = self.init_cfg, others
            super().init_weights()
            self.init_cfg = saved
        self.load_pretrained(
            cfg['checkpoint'], checkpoint_key=cfg.get('checkpoint_key'),
            trust_pickle=cfg.get('trust_pickle', False),
            prefix=cfg.get('prefix'))
        self._is_init = True

    # ------------------------------------------------------------- training
    def _freeze_stages(self) -> None:
        for stage in range(-1, self.frozen_stages):
            for module in self._stage_modules(stage):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True) -> 'DenseBackbone':
        """Set train mode, keeping frozen stages and (with ``norm_eval``)
        BatchNorm layers in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # --------------------------------------------- layer-wise lr decay
    def stage_blocks(self, stage: int) -> BlockStack:
        """The blocks of stage ``stage``: the :class:`BlockStack` that
        ``stage(stage)`` is or holds."""
        return next(module for module in self.stage(stage).modules()
                    if isinstance(module, BlockStack))

    def get_layer_depth(self,
                        param_name: str,
                        prefix: str = 'backbone.',
                        decay_type: str = 'layer_wise') -> Tuple[int, int]:
        """The layer id of a parameter, for layer-wise learning-rate decay
        (the mmpretrain API).

        Ids run from the input to the output: the stem is 0; stage ``s``'s
        blocks follow, ``blocks_per_layer_id`` consecutive blocks to an id
        (``'layer_wise'``) or the whole stage as id ``s + 1``
        (``'stage_wise'``); the downsampling into a stage (and InLine-PVT's
        position embedding of the stage) shares the id of the stage's first
        block; the output norms ``norm{i}`` and every parameter outside the
        backbone (neck, heads) get the last id, ``num_layers - 1``.

        With L²ViT (``blocks_per_layer_id = 3``) the layer-wise ids are the
        ConvNeXt map of the official code with ``num_layers`` at its smallest
        valid value (5 for 2-2-6-2, 9 for 2-2-18-2): ``downsample_layers.0``
        0, ``stages.0`` 1, ``downsample_layers.1`` and ``stages.1`` 2,
        ``downsample_layers.2`` 3, ``stages.2.<b>`` ``3 + b // 3``,
        ``downsample_layers.3`` and ``stages.3`` the next id, everything else
        the last. The InLine models give every block its own id
        (``num_layers = sum(depths) + 2``, as mmpretrain's Swin; its patch
        merging, though, goes with the block before it, here with the block
        after it, as ConvNeXt's downsampling). Stage-wise, the official code
        puts ``downsample_layers.1-3`` with the stem; here they go with the
        stage they feed, as layer-wise.

        Args:
            param_name (str): Parameter name, e.g.
                ``'backbone.stages.2.4.attn.qkv.weight'`` (or a neck/head
                name).
            prefix (str): Prefix of the backbone's parameters in
                ``param_name``; names outside it are the neck/head.
                Default: 'backbone.'.
            decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.
                Default: 'layer_wise'.

        Returns:
            tuple[int, int]: ``(layer_id, num_layers)``: the stem is 0, the
            neck and heads ``num_layers - 1``.
        """
        ids, num_layers = self._layer_ids(decay_type)
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name not in ids:
            raise ValueError(f'{type(self).__name__}.get_layer_depth: '
                             f'{param_name!r} is not a parameter of the '
                             f'backbone (prefix {prefix!r}).')
        return ids[name], num_layers

    def _layer_ids(self, decay_type: str) -> Tuple[Dict[str, int], int]:
        """Parameter name -> layer id, and the number of layer ids (the
        backbone's ids plus one for the neck and heads); computed once per
        ``decay_type``."""
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'{type(self).__name__}: decay_type must be one '
                             f'of {DECAY_TYPES}, got {decay_type!r}.')
        cache = self.__dict__.setdefault('_layer_ids_cache', {})
        if decay_type not in cache:
            by_param, head_id = self._layer_ids_by_param(decay_type)
            ids = {
                name: by_param.get(id(param), head_id)
                for name, param in self.named_parameters()
            }
            cache[decay_type] = (ids, head_id + 1)
        return cache[decay_type]

    def _layer_ids_by_param(self,
                            decay_type: str) -> Tuple[Dict[int, int], int]:
        """``id(parameter)`` -> layer id for the stem, the blocks and the
        downsampling layers, and the id left for everything else."""
        by_param: Dict[int, int] = {}

        def assign(parts: Sequence[Union[nn.Module, nn.Parameter]],
                   layer_id: int) -> None:
            for part in parts:
                params = [part] if isinstance(part, nn.Parameter) \
                    else part.parameters()
                for param in params:
                    by_param.setdefault(id(param), layer_id)

        assign(self.stage_input_modules(0), 0)
        next_id = 1
        for stage in range(self.num_stages):
            blocks = self.stage_blocks(stage)
            per_id = len(blocks) if decay_type == 'stage_wise' \
                else self.blocks_per_layer_id
            if stage > 0:
                assign(self.stage_input_modules(stage), next_id)
            for j, block in enumerate(blocks):
                assign([block], next_id + j // per_id)
            next_id += -(-len(blocks) // per_id)  # ceil division
        return by_param, next_id
