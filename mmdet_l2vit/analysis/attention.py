"""Capture attention rows and effective maps from whole backbones.

:func:`capture_attention` runs a model (a backbone of this package, or a
detector / segmentor containing one) on images with forward pre-hooks on
every module that has ``attention_rows`` (the reference attention modules,
see :mod:`mmdet_l2vit.models.layers.attention_rows`): each hook takes the
module's input and computes the rows of sampled queries, so only Q x N
weights per layer are ever held, never N x N.

:func:`global_block_effective_maps` measures what an L²ViT global block
(linear attention, LCM, MLP, CPE) does as a whole: the gradient of the block
output at a query (summed over channels) with respect to the block input,
reduced over channels, one backward per query.

Queries are flat token indices into a layer's H*W map, chosen per layer by
a *sampler* ``(H, W) -> LongTensor``: :func:`grid_queries` or
:func:`point_queries`.
"""
import contextlib
from typing import (Callable, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple)

import torch
from torch import nn

from ..models.backbones.base import DenseBackbone
from ..models.layers.l2vit_blocks import LGABlock

#: ``(H, W) -> (Q,) int64`` flat query indices of a layer's map.
QuerySampler = Callable[[int, int], torch.Tensor]


class AttentionRecord(NamedTuple):
    """The rows of one layer.

    Attributes:
        name (str): The module's name in the model.
        kind (str): Its ``attention_kind`` (``'effective'`` for effective
            maps).
        map_size (tuple[int, int]): (H, W) of the layer's map.
        queries (Tensor): (Q,) flat token indices.
        rows (Tensor): (B, heads, Q, H*W) float32 (heads 1 for effective
            maps).
    """
    name: str
    kind: str
    map_size: Tuple[int, int]
    queries: torch.Tensor
    rows: torch.Tensor


def grid_queries(per_side: int = 8) -> QuerySampler:
    """A sampler of an evenly spaced ``per_side`` x ``per_side`` grid (cell
    centres; fewer where the map is smaller; duplicates removed).

    Args:
        per_side (int): Queries along each side. Default: 8.
    """

    def sample(height: int, width: int) -> torch.Tensor:
        rows = ((torch.arange(per_side) + 0.5) * height / per_side).long()
        cols = ((torch.arange(per_side) + 0.5) * width / per_side).long()
        return torch.unique(rows[:, None] * width + cols[None, :])

    return sample


def point_queries(points: Sequence[Tuple[float, float]],
                  image_size: Tuple[int, int]) -> QuerySampler:
    """A sampler of the tokens covering image points.

    Args:
        points (Sequence[tuple[float, float]]): (x, y) image pixels.
        image_size (tuple[int, int]): (height, width) of the image the
            model sees.

    Returns:
        QuerySampler: Token ``(floor(y * H / height), floor(x * W /
        width))`` of each point, in the order given (a layer's map covers
        the image, so this is the token at the point's stride). Points
        falling into one token are kept once.
    """
    image_h, image_w = image_size
    for x, y in points:
        if not (0 <= x < image_w and 0 <= y < image_h):
            raise ValueError(f'query point ({x}, {y}) is outside the '
                             f'{image_w}x{image_h} image.')

    def sample(height: int, width: int) -> torch.Tensor:
        flat = [
            min(int(y * height / image_h), height - 1) * width +
            min(int(x * width / image_w), width - 1) for x, y in points
        ]
        return torch.tensor(list(dict.fromkeys(flat)), dtype=torch.long)

    return sample


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The modules of ``model`` that have ``attention_rows``, in module
    order (the backbones build them in depth order)."""
    return [(name, module) for name, module in model.named_modules()
            if callable(getattr(module, 'attention_rows', None))]


@contextlib.contextmanager
def reference_modules(model: nn.Module) -> Iterator[None]:
    """Run the reference modules of every backbone of this package inside
    ``model``: ``inference='reference'`` (the CPU inference engine would
    bypass the hooked modules) and no ``torch.compile``; restored after."""
    saved = [(m, m.inference, m.compile) for m in model.modules()
             if isinstance(m, DenseBackbone)]
    for backbone, _, _ in saved:
        backbone.inference, backbone.compile = 'reference', False
    try:
        yield
    finally:
        for backbone, inference, compiled in saved:
            backbone.inference, backbone.compile = inference, compiled


def _select(modules: List[Tuple[str, nn.Module]],
            names: Optional[Sequence[str]]) -> List[Tuple[str, nn.Module]]:
    if names is None:
        return modules
    known = dict(modules)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f'no attention module named {unknown}; the model '
                       f'has {list(known)}.')
    return [(n, known[n]) for n in names]


@contextlib.contextmanager
def _pre_hooks(modules: List[Tuple[str, nn.Module]],
               hook: Callable[[str, nn.Module, torch.Tensor], None]
               ) -> Iterator[None]:
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, name=name: hook(name, m, args[0]))
        for name, module in modules
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_attention(model: nn.Module,
                      images: torch.Tensor,
                      sampler: QuerySampler,
                      names: Optional[Sequence[str]] = None
                      ) -> List[AttentionRecord]:
    """Attention rows of sampled queries at every attention layer.

    Args:
        model (nn.Module): Any model containing attention modules with
            ``attention_rows``; put it in eval mode first (drop path).
        images (Tensor): (B, 3, H, W) normalised images.
        sampler (QuerySampler): Queries of each layer's map.
        names (Sequence[str], optional): Only these modules (names as in
            :func:`attention_modules`). Default: all.

    Returns:
        list[AttentionRecord]: One per layer, in the order they ran.
    """
    modules = _select(attention_modules(model), names)
    if not modules:
        raise ValueError(f'{type(model).__name__} has no module with '
                         'attention_rows.')
    records: List[AttentionRecord] = []

    def record(name: str, module: nn.Module, x: torch.Tensor) -> None:
        H, W = x.shape[1:3]
        queries = sampler(H, W).to(x.device)
        records.append(
            AttentionRecord(name, module.attention_kind, (H, W), queries,
                            module.attention_rows(x, queries)))

    with torch.no_grad(), reference_modules(model), _pre_hooks(
            modules, record):
        model(images)
    return records


def capture_inputs(model: nn.Module, images: torch.Tensor,
                   modules: List[Tuple[str, nn.Module]]
                   ) -> List[Tuple[str, nn.Module, torch.Tensor]]:
    """The input each of ``modules`` receives when ``model`` runs on
    ``images`` (without autograd), with its name and module."""
    inputs: List[Tuple[str, nn.Module, torch.Tensor]] = []
    with torch.no_grad(), reference_modules(model), _pre_hooks(
            modules, lambda n, m, x: inputs.append((n, m, x.detach()))):
        model(images)
    return inputs


@contextlib.contextmanager
def lcm_removed(block: LGABlock) -> Iterator[None]:
    """Inside, ``block`` runs without its LCM branch (a forward hook makes
    the branch output zero); a block without an LCM is unchanged."""
    if block.local_mp is None:
        yield
        return
    handle = block.local_mp.register_forward_hook(
        lambda module, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def effective_maps(module: nn.Module, x: torch.Tensor,
                   queries: torch.Tensor,
                   reduce: str = 'norm',
                   exclude_identity: bool = False) -> torch.Tensor:
    """Input gradients of a (B, H, W, C) -> (B, H, W, C) module at queries.

    For each query token, the module output there, summed over channels,
    is differentiated with respect to the whole input map (one backward per
    query; the images of the batch are independent in eval mode, so one
    backward serves the batch).

    Args:
        module (nn.Module): The module, e.g. an :class:`LGABlock`.
        x (Tensor): (B, H, W, C) input.
        queries (Tensor): (Q,) flat token indices.
        reduce (str): Over the input channels: ``'norm'`` (L2) or
            ``'abs_sum'``. Default: 'norm'.
        exclude_identity (bool): Differentiate ``module(x) - x`` (what a
            residual block adds to its input) instead of ``module(x)``: the
            residual stream's identity path, which puts ``sqrt(C)`` (norm)
            on the query's own token and dwarfs everything else, is left
            out. Default: False.

    Returns:
        Tensor: (B, 1, Q, H*W) float32, non-negative.
    """
    if reduce not in ('norm', 'abs_sum'):
        raise ValueError(f"reduce must be 'norm' or 'abs_sum', got "
                         f'{reduce!r}.')
    B, H, W, _ = x.shape
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = module(x)
        if exclude_identity:
            out = out - x
        out = out.reshape(B, H * W, -1)
        maps = []
        for query in queries.tolist():
            grad, = torch.autograd.grad(out[:, query].sum(), x,
                                        retain_graph=True)
            reduced = grad.norm(dim=-1) if reduce == 'norm' else \
                grad.abs().sum(dim=-1)
            maps.append(reduced.reshape(B, H * W).float())
    return torch.stack(maps, dim=1)[:, None]


def global_block_effective_maps(model: nn.Module,
                                images: torch.Tensor,
                                sampler: QuerySampler,
                                with_lcm: bool = True,
                                reduce: str = 'norm',
                                exclude_identity: bool = False,
                                names: Optional[Sequence[str]] = None
                                ) -> List[AttentionRecord]:
    """Effective maps of every L²ViT global block (:class:`LGABlock`).

    Args:
        model (nn.Module): A model containing L²ViT global blocks, in eval
            mode.
        images (Tensor): (B, 3, H, W) normalised images.
        sampler (QuerySampler): Queries of each block's map.
        with_lcm (bool): Keep the LCM branch; ``False`` measures the block
            without it (the same inputs, the branch zeroed). Default: True.
        reduce (str): See :func:`effective_maps`. Default: 'norm'.
        exclude_identity (bool): See :func:`effective_maps`.
            Default: False.
        names (Sequence[str], optional): Only the blocks of these names.
            Default: all.

    Returns:
        list[AttentionRecord]: One per block, kind ``'effective'``, rows
        (B, 1, Q, H*W).
    """
    blocks = [(n, m) for n, m in model.named_modules()
              if isinstance(m, LGABlock)]
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no L2ViT global '
                         'block (LGABlock).')
    if names is not None:
        blocks = [(n, m) for n, m in blocks if n in set(names)]
    records = []
    for name, block, x in capture_inputs(model, images, blocks):
        H, W = x.shape[1:3]
        queries = sampler(H, W).to(x.device)
        with (contextlib.nullcontext() if with_lcm else lcm_removed(block)):
            maps = effective_maps(block, x, queries, reduce,
                                  exclude_identity)
        records.append(
            AttentionRecord(name, 'effective', (H, W), queries, maps))
    return records
