"""Per-layer attention statistics over images, for the analysis tools.

:func:`attention_statistics` runs a backbone on images one by one
(:func:`.attention.capture_attention` on a query grid), summarises every
layer (:func:`.attention_metrics.summarise_rows`) and averages over the
images; optionally the effective maps of L²ViT's global blocks, with and
without their LCM (:func:`.attention.global_block_effective_maps`), join
as extra layers named ``<block> [effective +LCM]`` / ``[effective -LCM]``.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .attention import (AttentionRecord, QuerySampler, attention_modules,
                        capture_attention, global_block_effective_maps,
                        grid_queries)
from .attention_metrics import summarise_rows
from .loading import Normalisation, load_image

#: The averaged metrics of a layer (the plots of ``attention_stats.py``).
MEAN_METRICS = ('entropy', 'normalised_entropy', 'local_share_3',
                'local_share_7')


def layer_depths(model: nn.Module) -> Dict[str, int]:
    """Depth (position among the attention layers) of every attention
    module by name."""
    return {name: i for i, (name, _) in enumerate(attention_modules(model))}


def depth_of(name: str, depths: Dict[str, int]) -> int:
    """Depth of an attention module, or of the block holding one."""
    if name in depths:
        return depths[name]
    inside = [d for n, d in depths.items() if n.startswith(name + '.')]
    if not inside:
        raise KeyError(f'{name} is not an attention layer or a block '
                       'holding one.')
    return min(inside)


def select_layers(records: Sequence[AttentionRecord],
                  layers: Optional[Sequence[Union[int, str]]] = None
                  ) -> List[AttentionRecord]:
    """Records by name or index; default: the last attention layer of
    each map size (the last layer of every stage).

    Args:
        records (Sequence[AttentionRecord]): One image's capture.
        layers (Sequence[int | str], optional): Names, or indices into
            ``records``.
    """
    if layers is None:
        last: Dict[Tuple[int, int], AttentionRecord] = OrderedDict()
        for record in records:
            last.pop(record.map_size, None)
            last[record.map_size] = record
        return list(last.values())
    by_name = {r.name: r for r in records}
    chosen = []
    for layer in layers:
        if isinstance(layer, int) or str(layer).lstrip('-').isdigit():
            chosen.append(records[int(layer)])
        elif layer in by_name:
            chosen.append(by_name[layer])
        else:
            raise KeyError(f'no attention layer {layer!r}; the layers are '
                           f'{list(by_name)} (or their indices).')
    return chosen


def effective_records(model: nn.Module, images: torch.Tensor,
                      sampler: QuerySampler,
                      blocks: Optional[Sequence[str]] = None
                      ) -> List[AttentionRecord]:
    """Effective maps of L²ViT's global blocks with and without the LCM,
    named ``<block> [effective +LCM]`` / ``[effective -LCM]`` (empty when
    the model has no such block): the input gradients of what each block
    adds to its input (``block(x) - x``, the identity path left out, see
    :func:`.attention.effective_maps`), L2 norm over the channels; only
    the ``blocks`` named, if given."""
    from ..models.layers.l2vit_blocks import LGABlock
    if not any(isinstance(m, LGABlock) for m in model.modules()):
        return []
    records = []
    for with_lcm, tag in ((True, '+LCM'), (False, '-LCM')):
        for record in global_block_effective_maps(
                model, images, sampler, with_lcm=with_lcm,
                exclude_identity=True, names=blocks):
            records.append(
                record._replace(name=f'{record.name} [effective {tag}]'))
    return records


def block_of(name: str) -> str:
    """The block an attention layer or an effective-map record belongs to
    (``stages.0.1.attn`` and ``stages.0.1 [effective +LCM]``:
    ``stages.0.1``)."""
    name = name.split(' [')[0]
    return name[:-len('.attn')] if name.endswith('.attn') else name


class _LayerMeans:
    """Running sums of one layer's per-image summaries."""

    def __init__(self, name: str, kind: str, depth: int) -> None:
        self.name, self.kind, self.depth = name, kind, depth
        self.sums = dict.fromkeys(MEAN_METRICS, 0.)
        self.collisions = self.pairs = self.images = self.tokens = 0

    def add(self, summary: Dict[str, float], tokens: int) -> None:
        for key in MEAN_METRICS:
            self.sums[key] += summary[key]
        self.collisions += summary['collisions']
        self.pairs += summary['pairs']
        self.images += 1
        self.tokens += tokens

    def result(self) -> Dict[str, object]:
        means = {k: v / self.images for k, v in self.sums.items()}
        return dict(
            name=self.name, kind=self.kind, depth=self.depth,
            images=self.images, mean_tokens=self.tokens / self.images,
            **means, collisions=self.collisions, pairs=self.pairs,
            collision_fraction=self.collisions / self.pairs
            if self.pairs else float('nan'))


def attention_statistics(model: nn.Module,
                         paths: Sequence[str],
                         normalisation: Normalisation = Normalisation(),
                         size: Optional[Tuple[int, int]] = None,
                         per_side: int = 8,
                         threshold: float = 1e-3,
                         metric: str = 'max_abs',
                         effective_per_side: int = 0
                         ) -> List[Dict[str, object]]:
    """Per-layer metrics averaged over images.

    Args:
        model (nn.Module): An eval-mode backbone (or a model holding one).
        paths (Sequence[str]): Image files, run one at a time.
        normalisation (Normalisation): How the model expects images.
        size (tuple[int, int], optional): Resize the images to (H, W).
        per_side (int): Query grid per side, per layer. Default: 8.
        threshold (float): Collision threshold. Default: 1e-3.
        metric (str): Collision distance. Default: 'max_abs'.
        effective_per_side (int): Query grid of the global blocks'
            effective maps; 0 skips them. Default: 0.

    Returns:
        list[dict]: One dict per layer in depth order: ``name``, ``kind``,
        ``depth``, ``images``, ``mean_tokens``, the means of
        :data:`MEAN_METRICS`, ``collisions`` and ``pairs`` (summed over
        images and heads) and ``collision_fraction``.
    """
    depths = layer_depths(model)
    layers: Dict[str, _LayerMeans] = OrderedDict()
    for path in paths:
        image, _ = load_image(path, normalisation, size)
        records = capture_attention(model, image, grid_queries(per_side))
        if effective_per_side:
            records += effective_records(model, image,
                                         grid_queries(effective_per_side))
        for record in records:
            if record.name not in layers:
                depth = depth_of(block_of(record.name), depths)
                layers[record.name] = _LayerMeans(record.name, record.kind,
                                                  depth)
            tokens = record.map_size[0] * record.map_size[1]
            layers[record.name].add(
                summarise_rows(record.rows, record.queries, record.map_size,
                               threshold, metric), tokens)
    return sorted((m.result() for m in layers.values()),
                  key=lambda layer: layer['depth'])
