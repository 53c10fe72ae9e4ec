"""Effective receptive field (ERF) of any backbone.

As in Luo et al. (2016) and RepLKNet (Ding et al. 2022, its
``erf/visualize_erf.py``): a score of the central position of a chosen
stage's output map is differentiated with respect to the input image, and
the absolute gradient, summed over the colour channels, is averaged over a
set of images. The radius that holds a given share of this mass around the
central position says how far the stage effectively looks.

The score (:data:`SCORES`) is by default RepLKNet's: the sum over channels
of the ReLU of the central feature vector. A plain channel sum is
identically zero after a LayerNorm without affine change (the output norms
of our backbones and of mmdet's Swin at initialisation, and after
importing a classification checkpoint, are such), so its gradient says
nothing there.

Works for any module that maps (B, 3, H, W) images to a tuple / list of
NCHW feature maps (the mmdet / mmseg backbone contract): this package's
backbones (with autograd on, the reference modules run) and the toolboxes'
own (e.g. mmdet's ``SwinTransformer``).
"""
from typing import Callable, Dict, Iterable, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: Scores of the central (B, C) feature vector that are differentiated.
SCORES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'relu_sum': lambda feature: F.relu(feature).sum(),
    'sum': lambda feature: feature.sum(),
    'norm': lambda feature: feature.norm(dim=1).sum(),
}


class ERFResult(NamedTuple):
    """An effective receptive field.

    Attributes:
        heat (Tensor): (H, W) mean absolute input gradient.
        centre (tuple[float, float]): (row, col) in input pixels of the
            central output position (the centre of its stride cell).
        output_size (tuple[int, int]): (h, w) of the stage's map.
        num_images (int): Images averaged.
    """
    heat: torch.Tensor
    centre: Tuple[float, float]
    output_size: Tuple[int, int]
    num_images: int


def stage_output(backbone: nn.Module, images: torch.Tensor,
                 output_index: int) -> torch.Tensor:
    """The ``output_index``-th NCHW map a backbone returns."""
    outs = backbone(images)
    if isinstance(outs, torch.Tensor):
        outs = (outs, )
    if not -len(outs) <= output_index < len(outs):
        raise IndexError(f'{type(backbone).__name__} returns {len(outs)} '
                         f'maps; output_index {output_index} is out of '
                         'range.')
    return outs[output_index]


def output_centre(output_size: Tuple[int, int],
                  input_size: Tuple[int, int]) -> Tuple[float, float]:
    """Input-pixel centre of the central output position ``(h // 2, w //
    2)``: the middle of its cell when the map covers the image evenly."""
    return tuple((o // 2 + 0.5) * i / o - 0.5
                 for o, i in zip(output_size, input_size))


def central_input_gradient(backbone: nn.Module, image: torch.Tensor,
                           output_index: int, score: str = 'relu_sum'
                           ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """|d score(output feature at the centre) / d image|.

    Args:
        backbone (nn.Module): In eval mode.
        image (Tensor): (1, 3, H, W) normalised image.
        output_index (int): Which of the backbone's outputs.
        score (str): A key of :data:`SCORES`. Default: 'relu_sum'.

    Returns:
        tuple: The (H, W) absolute gradient summed over the colour
        channels, and the (h, w) size of the output map.
    """
    image = image.detach().requires_grad_(True)
    with torch.enable_grad():
        out = stage_output(backbone, image, output_index)
        h, w = out.shape[-2:]
        grad, = torch.autograd.grad(
            SCORES[score](out[:, :, h // 2, w // 2]), image)
    return grad.abs().sum(dim=1)[0].float(), (h, w)


def effective_receptive_field(backbone: nn.Module,
                              images: Iterable[torch.Tensor],
                              output_index: int = -1,
                              score: str = 'relu_sum') -> ERFResult:
    """The mean absolute input gradient over images of one size.

    Args:
        backbone (nn.Module): Put it in eval mode first.
        images (Iterable[Tensor]): (1, 3, H, W) normalised images, all of
            one size.
        output_index (int): Which of the backbone's outputs (the stage,
            for backbones returning all four). Default: -1.
        score (str): What is differentiated, a key of :data:`SCORES`.
            Default: 'relu_sum'.

    Returns:
        ERFResult: The heat map and where its centre is.
    """
    if score not in SCORES:
        raise ValueError(f'unknown score {score!r}; choose one of '
                         f'{sorted(SCORES)}.')
    total, count, output_size = None, 0, None
    for image in images:
        grad, output_size = central_input_gradient(backbone, image,
                                                   output_index, score)
        if total is not None and grad.shape != total.shape:
            raise ValueError('all images must have one size (resize them); '
                             f'got {tuple(total.shape)} and '
                             f'{tuple(grad.shape)}.')
        total = grad if total is None else total + grad
        count += 1
    if not count:
        raise ValueError('no images given.')
    centre = output_centre(output_size, tuple(total.shape))
    return ERFResult(total / count, centre, output_size, count)


def mass_radii(heat: torch.Tensor, centre: Tuple[float, float],
               fractions: Sequence[float] = (0.2, 0.5, 0.8)
               ) -> Dict[float, float]:
    """Radii (input pixels, Euclidean) of the discs around ``centre`` that
    hold each fraction of the heat map's mass.

    Args:
        heat (Tensor): (H, W) non-negative map.
        centre (tuple[float, float]): (row, col) of the centre.
        fractions (Sequence[float]): Shares of the mass in (0, 1].
            Default: (0.2, 0.5, 0.8).

    Returns:
        dict[float, float]: For each fraction, the distance of the pixel
        at which the mass of all pixels at most that far first reaches it
        (0 when the centre pixel alone holds it).
    """
    H, W = heat.shape
    rows = torch.arange(H, dtype=torch.float64)[:, None] - centre[0]
    cols = torch.arange(W, dtype=torch.float64)[None, :] - centre[1]
    distance = (rows**2 + cols**2).sqrt().flatten()
    order = distance.argsort(stable=True)
    mass = heat.flatten().double()[order].cumsum(0)
    if mass[-1] <= 0:
        raise ValueError('the heat map has no mass.')
    radii = {}
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f'fractions must be in (0, 1], got {fraction}.')
        reached = torch.searchsorted(mass, fraction * mass[-1] * (1 - 1e-12))
        radii[fraction] = float(distance[order][min(int(reached),
                                                     mass.numel() - 1)])
    return radii
