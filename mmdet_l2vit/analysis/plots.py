"""Figures of the attention and receptive-field tools (matplotlib).

Built on :class:`matplotlib.figure.Figure` directly (no pyplot state, no
display needed); each function writes one PNG.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

from .attention import AttentionRecord

#: Attention kinds whose weights can be negative (diverging colours).
SIGNED_KINDS = ('inline', )
#: Marker of each attention kind in the depth plots.
KIND_MARKERS = {'window_softmax': 's', 'swin_window_softmax': 'D',
                'linear': 'o', 'softmax': '^', 'inline': 'v',
                'effective': 'P'}


def head_rows(record: AttentionRecord, image: int = 0,
              head: Optional[int] = None) -> torch.Tensor:
    """(Q, H, W) rows of one image: one head, or the mean over heads."""
    rows = record.rows[image]
    rows = rows.mean(dim=0) if head is None else rows[head]
    return rows.view(-1, *record.map_size)


def _colour_scale(kind: str, maps: torch.Tensor) -> Tuple[str, Normalize]:
    """Diverging, centred at 0, for signed kinds; from 0 otherwise."""
    if kind in SIGNED_KINDS:
        bound = max(float(maps.abs().max()), 1e-12)
        return 'RdBu_r', TwoSlopeNorm(0., -bound, bound)
    return 'inferno', Normalize(0., max(float(maps.max()), 1e-12))


def plot_attention_overlays(picture: np.ndarray, record: AttentionRecord,
                            path: str, head: Optional[int] = None,
                            title: str = '', alpha: float = 0.65,
                            minus_mean: bool = False) -> None:
    """One panel per query: the picture under the query's attention row.

    Args:
        picture (ndarray): (H, W, 3) uint8 RGB image the model saw.
        record (AttentionRecord): One layer's rows (image 0 is shown).
        path (str): PNG to write.
        head (int, optional): Show this head; default the mean over heads.
        title (str): Figure title.
        alpha (float): Opacity of the attention layer. Default: 0.65.
        minus_mean (bool): Show each row minus its mean over the map (for
            InLine: ``w_ij - 1/N = s q_i . (k_j - mean(k)) / N``, what
            distinguishes the queries), on a diverging colour map.
            Default: False.

    Each panel has its own colour scale (a colour bar beside it); signed
    kinds (InLine) use a diverging map centred at 0, the others start at 0.
    The query token is outlined in cyan.
    """
    maps = head_rows(record, head=head)
    kind = record.kind
    if minus_mean:
        maps = maps - maps.mean(dim=(-2, -1), keepdim=True)
        kind = 'inline'  # signed: diverging colours
    num = maps.shape[0]
    columns = min(num, 4)
    rows = math.ceil(num / columns)
    fig = Figure(figsize=(3.4 * columns, 3.0 * rows + 0.5))
    image_h, image_w = picture.shape[:2]
    map_h, map_w = record.map_size
    cell_h, cell_w = image_h / map_h, image_w / map_w
    for i, (query, heat) in enumerate(zip(record.queries.tolist(), maps)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(picture)
        cmap, norm = _colour_scale(kind, heat)
        layer = ax.imshow(heat.numpy(), cmap=cmap, norm=norm, alpha=alpha,
                          extent=(0, image_w, image_h, 0),
                          interpolation='nearest')
        r, c = divmod(query, map_w)
        ax.add_patch(_cell(c * cell_w, r * cell_h, cell_w, cell_h))
        ax.set_title(f'query ({r}, {c})', fontsize=9)
        ax.set_axis_off()
        fig.colorbar(layer, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title or f'{record.name} ({record.kind})', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cell(x: float, y: float, w: float, h: float) -> Rectangle:
    return Rectangle((x, y), w, h, fill=False, edgecolor='cyan',
                     linewidth=1.5)


def _depth_axis(runs: Sequence[Tuple[str, List[Dict]]]
                ) -> Tuple[Dict[int, str], int]:
    """Tick names by depth when all runs share their layers' depths and
    names, else ``({}, max depth)`` (runs then plot at relative depth)."""
    named = [{layer['depth']: layer['name'].split(' [')[0]
              for layer in layers} for _, layers in runs]
    deepest = max(max(names, default=0) for names in named)
    merged: Dict[int, str] = {}
    for names in named:
        for depth, name in names.items():
            if merged.setdefault(depth, name) != name:
                return {}, deepest
    return merged, deepest


def plot_metric_against_depth(runs: Sequence[Tuple[str, List[Dict]]],
                              metric: str, path: str,
                              ylabel: Optional[str] = None) -> None:
    """One line per run: a layer metric against layer depth.

    Args:
        runs (Sequence[tuple[str, list[dict]]]): ``(label, layers)``, each
            layer a dict with ``name``, ``kind``, ``depth`` (position among
            the model's attention layers) and ``metric``.
        metric (str): Key of the value to plot.
        path (str): PNG to write.
        ylabel (str, optional): Axis label. Default: ``metric``.

    Runs of one architecture share an axis of layer names; runs of
    different depths are drawn against relative depth (0: first layer, 1:
    last) so that stages line up roughly.
    """
    ticks, _ = _depth_axis(runs)
    fig = Figure(figsize=(10, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    for label, layers in runs:
        layers = sorted(layers, key=lambda layer: layer['depth'])
        deepest = max(max(layer['depth'] for layer in layers), 1)
        xs = [layer['depth'] if ticks else layer['depth'] / deepest
              for layer in layers]
        line, = ax.plot(xs, [layer[metric] for layer in layers],
                        label=label, alpha=0.8)
        for x, layer in zip(xs, layers):
            ax.plot(x, layer[metric], linestyle='none',
                    color=line.get_color(),
                    marker=KIND_MARKERS.get(layer['kind'], 'x'))
    kinds = sorted({layer['kind'] for _, layers in runs for layer in layers})
    for kind in kinds:  # legend entries of the markers
        ax.plot([], [], linestyle='none', color='grey',
                marker=KIND_MARKERS.get(kind, 'x'), label=kind)
    if ticks:
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([ticks[d] for d in sorted(ticks)], rotation=70,
                           fontsize=7, ha='right')
        ax.set_xlabel('layer (depth order)')
    else:
        ax.set_xlabel('relative depth (first attention layer 0, last 1)')
    ax.set_ylabel(ylabel or metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_erf(heat: torch.Tensor, centre: Tuple[float, float],
             radii: Dict[float, float], path: str, title: str = '') -> None:
    """The ERF heat map (log scale, ``log10(1 + heat / mean)``) with the
    circles holding each share of the mass.

    Args:
        heat (Tensor): (H, W) mean absolute input gradient.
        centre (tuple[float, float]): (row, col) of the central output.
        radii (dict[float, float]): Mass share -> radius in pixels.
        path (str): PNG to write.
        title (str): Figure title.
    """
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    scaled = torch.log10(1 + heat / heat.mean().clamp(min=1e-30))
    image = ax.imshow(scaled.numpy(), cmap='viridis')
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02,
                 label='log10(1 + grad / mean)')
    for share, radius in sorted(radii.items()):
        ax.add_patch(Circle((centre[1], centre[0]), max(radius, 0.5),
                            fill=False, edgecolor='white', linewidth=1,
                            linestyle='--'))
        ax.annotate(f'{share:.0%}: r={radius:.1f}',
                    (centre[1] + radius * 0.71, centre[0] - radius * 0.71),
                    color='white', fontsize=8)
    # one line per comma-separated part, so a long title stays in the figure
    ax.set_title(title.replace(', ', '\n', 1), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
