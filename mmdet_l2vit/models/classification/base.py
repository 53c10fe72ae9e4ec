"""What the classification models add to a dense backbone: the official head.

A classifier is the family's backbone class with :class:`ClassifierMixin` in
front: the same stem, stages and blocks (no second copy of any block), no
output norms, and the official tail (``norm`` where the family has one, mean
over tokens, ``head``). Its ``state_dict()`` is therefore exactly the
official classification layout, so an official file loads into it strictly
and a checkpoint it writes is an official-format checkpoint.

It also speaks timm's model interface (``forward_features``,
``forward_head``, ``forward_intermediates``, ``feature_info``,
``reset_classifier``, and ``load_pretrained`` for timm's ``custom_load``),
so :mod:`.timm_models` registers the classifiers in timm's registry.
"""
import logging
from typing import List, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from timm.models._features import feature_take_indices
from torch import nn

from ...checkpoint import (CheckpointError, extract_state_dict,
                           load_state_dict_strictly, read_checkpoint_file)
from ..layers.common import channels_last_to_nchw


class ClassifierMixin:
    """The official classification tail and timm's interface, in front of a
    :class:`~mmdet_l2vit.models.backbones.base.DenseBackbone` subclass.

    Subclasses are declared as ``class L2ViTClassifier(ClassifierMixin,
    L2ViT)`` and call :meth:`_build_classifier` at the end of ``__init__``.
    """

    #: Whether the official model applies a final LayerNorm (``norm``)
    #: before pooling. InLine-PVT has none.
    final_norm = True

    def _add_output_norms(self, eps: float = 1e-5) -> None:
        """The classification layout has no per-stage output norms."""

    def _build_classifier(self, num_classes: int, global_pool: str,
                          drop_rate: float,
                          checkpoint_key: Optional[str]) -> None:
        """Build ``norm`` / ``head``, timm's attributes, and initialise every
        parameter (timm models are initialised at construction)."""
        if global_pool not in ('avg', ''):
            raise ValueError(f'{type(self).__name__}: global_pool must be '
                             f"'avg' or '' (no pooling), got {global_pool!r}.")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.checkpoint_key = checkpoint_key
        if self.final_norm:
            self.norm = nn.LayerNorm(self.num_features, eps=1e-5)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._new_head(num_classes)
        self.feature_info = [
            dict(num_chs=dims, reduction=4 * 2**i, module=self.stage_name(i))
            for i, dims in enumerate(self.embed_dims)
        ]
        self._init_from_scratch()

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(head.weight, std=.02)
        nn.init.zeros_(head.bias)
        return head

    def stage_name(self, stage: int) -> str:
        """The module name of stage ``stage`` (timm's ``feature_info``)."""
        for name, module in self.named_modules():
            if module is self.stage(stage):
                return name
        raise KeyError(stage)

    # --------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images -> the last stage's (B, C, h, w) map,
        through the backbone's ``forward`` (the CPU inference engine where
        it applies)."""
        return super().forward(x)[-1]

    def forward_head(self, x: torch.Tensor,
                     pre_logits: bool = False) -> torch.Tensor:
        """The official tail: ``norm`` on every token (where the family has
        one), mean over tokens, dropout, ``head``."""
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.final_norm:
            tokens = self.norm(tokens)
        if not self.global_pool:
            return tokens
        pooled = self.head_drop(tokens.mean(1))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the stage maps of ``indices``.

        Args:
            x (Tensor): (B, C_in, H, W) images.
            indices (int | list[int], optional): Stages to return (an int
                ``n``: the last ``n``). Default: all four.
            norm (bool): Not supported (the official model normalises only
                the last stage); must be False.
            stop_early (bool): Accepted for timm; every stage runs.
            output_fmt (str): ``'NCHW'`` or ``'NHWC'``.
            intermediates_only (bool): Return only the maps.

        Returns:
            list[Tensor] | tuple[Tensor, list[Tensor]]: The maps, or the
            last stage's map (``forward_features``) and the maps.
        """
        if norm:
            raise ValueError(f'{type(self).__name__}: norm=True is not '
                             'supported; the stage maps have no norms.')
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got "
                             f'{output_fmt!r}.')
        take, _ = feature_take_indices(self.num_stages, indices)
        if (intermediates_only and output_fmt == 'NCHW'
                and tuple(take) == self.out_indices):
            return list(super().forward(x))  # what features_only runs
        stages = self.forward_stages(x)
        maps = [
            channels_last_to_nchw(stages[i]) if output_fmt == 'NCHW' else
            stages[i] for i in take
        ]
        if intermediates_only:
            return maps
        return channels_last_to_nchw(stages[-1]), maps

    def prune_intermediate_layers(self,
                                  indices: Union[int, List[int]] = 1,
                                  prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep what ``features_only`` needs: the stages of ``indices`` as
        this model's ``out_indices``, and no classifier (``prune_head``)."""
        take, _ = feature_take_indices(self.num_stages, indices)
        self.out_indices = tuple(take)
        if prune_head:
            self.reset_classifier(0, '')
        if prune_norm and self.final_norm:
            self.norm = nn.Identity()
        return take

    # ------------------------------------------------------------ classifier
    def get_classifier(self) -> nn.Module:
        """The classification layer (timm)."""
        return self.head

    def reset_classifier(self, num_classes: int,
                         global_pool: Optional[str] = None) -> None:
        """A new ``head`` for ``num_classes`` (0: none), optionally another
        ``global_pool`` (timm)."""
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)

    # --------------------------------------------------------------- loading
    def load_pretrained(self, checkpoint: str,
                        checkpoint_key: Optional[str] = None,
                        trust_pickle: bool = False) -> None:
        """Load an official classification checkpoint strictly, as timm's
        ``custom_load`` hook (``pretrained_cfg_overlay=dict(file=PATH)``).

        The file is read with the package's safe reader (weights-only
        unpickling, ``argparse.Namespace`` and yacs ``CfgNode`` allowed).

        Args:
            checkpoint (str): Path of the official file.
            checkpoint_key (str, optional): Entry to load, e.g.
                ``'model_ema'``. Default: the model's ``checkpoint_key``,
                else ``model`` (as the official loaders).
            trust_pickle (bool): Read the file with full pickle.
        """
        key = checkpoint_key or self.checkpoint_key
        raw = read_checkpoint_file(checkpoint, trust_pickle=trust_pickle)
        state_dict, source = extract_state_dict(raw, key)
        try:
            load_state_dict_strictly(self, state_dict,
                                     source=f"{checkpoint}['{source}']",
                                     expected_family=self.family,
                                     resized_on_load=self.resized_on_load)
        except CheckpointError as error:
            raise self.with_switch_hint(error, state_dict) from None
        print_log(f'{type(self).__name__}: loaded {checkpoint} [{source}]',
                  logger='current', level=logging.INFO)
