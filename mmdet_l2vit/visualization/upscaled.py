"""Visualizers that paint at a readable scale: the toolbox visualizers,
drawing on an upscaled image.

The demo images are 128-192 px wide. mmengine's visualizer draws text and
lines in points, whatever the image size, so on such small images the labels
cover the objects. :class:`UpscaleMixin` upscales the image and a copy of the
data sample (boxes, masks, label maps) by an integer factor before the
toolbox's own ``add_datasample`` draws them: the labels keep their size in
pixels and the objects grow around them. Ground truth and prediction are
still painted side by side by the toolbox (GT left, prediction right).

- :class:`UpscaledDetLocalVisualizer` (``mmdet`` ``VISUALIZERS``):
  ``mmdet.visualization.DetLocalVisualizer``.
- :class:`UpscaledSegLocalVisualizer` (``mmseg`` ``VISUALIZERS``):
  ``mmseg.visualization.SegLocalVisualizer``.

Each is defined when its toolbox (with mmcv's compiled ops, which the
toolbox's visualization package imports) is installed.
"""
from typing import Any, List, Optional

import cv2
import numpy as np
import torch
from mmengine.dist import master_only
from mmengine.structures import BaseDataElement, InstanceData, PixelData

#: Image interpolations of :func:`upscale_image` (OpenCV flags).
INTERPOLATIONS = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR}

ArrayLike = Any  # torch.Tensor or np.ndarray


def _repeat_pixels(data: ArrayLike, scale: int) -> ArrayLike:
    """Nearest-neighbour upscaling of the last two axes by ``scale``
    (each pixel becomes a ``scale x scale`` block; dtype kept)."""
    if isinstance(data, torch.Tensor):
        return data.repeat_interleave(scale, dim=-2).repeat_interleave(
            scale, dim=-1)
    return np.repeat(np.repeat(data, scale, axis=-2), scale, axis=-1)


def check_scale(scale: int) -> int:
    """Validate an upscaling factor.

    Args:
        scale (int): The factor.

    Returns:
        int: ``scale``.

    Raises:
        ValueError: ``scale`` is not a positive integer (an integer factor
            keeps every label-map pixel a whole block and box corners on
            pixel borders).
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f'scale must be a positive integer, got {scale!r}')
    return scale


def check_interpolation(interpolation: str) -> str:
    """Validate an image interpolation name.

    Args:
        interpolation (str): A key of :data:`INTERPOLATIONS`.

    Returns:
        str: ``interpolation``.

    Raises:
        ValueError: An unknown name.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f'interpolation must be one of '
                         f'{sorted(INTERPOLATIONS)}, got {interpolation!r}')
    return interpolation


def upscale_image(image: np.ndarray, scale: int,
                  interpolation: str = 'nearest') -> np.ndarray:
    """Upscale an ``(H, W[, C])`` image to ``(scale*H, scale*W[, C])``.

    Args:
        image (np.ndarray): The image.
        scale (int): Integer factor.
        interpolation (str): 'nearest' or 'bilinear'. Default: 'nearest'.

    Returns:
        np.ndarray: The upscaled image (same dtype).
    """
    check_scale(scale)
    check_interpolation(interpolation)
    if scale == 1:
        return image
    height, width = image.shape[:2]
    return cv2.resize(image, (width * scale, height * scale),
                      interpolation=INTERPOLATIONS[interpolation])


def upscale_pixel_data(pixel_data: PixelData, scale: int) -> PixelData:
    """A copy of a :obj:`PixelData` (label maps, logits, depth) with every
    field upscaled by ``scale`` (nearest neighbour, values unchanged)."""
    upscaled = PixelData(metainfo=dict(pixel_data.metainfo_items()))
    for key, value in pixel_data.items():
        setattr(upscaled, key, _repeat_pixels(value, scale))
    return upscaled


def upscale_instances(instances: InstanceData, scale: int) -> InstanceData:
    """A copy of an :obj:`InstanceData` with ``bboxes`` (tensor, array or
    mmdet box type) and ``masks`` (``(N, H, W)`` tensor or array, or mmdet
    ``BitmapMasks`` / ``PolygonMasks``) upscaled by ``scale``; the other
    fields (labels, scores, ...) are shared."""
    upscaled = instances.new()
    if 'bboxes' in instances:
        bboxes = instances.bboxes
        if hasattr(bboxes, 'rescale_'):  # mmdet BaseBoxes
            bboxes = bboxes.clone()
            bboxes.rescale_((scale, scale))
        else:
            bboxes = bboxes * scale
        upscaled.bboxes = bboxes
    if 'masks' in instances:
        masks = instances.masks
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            masks = _repeat_pixels(masks, scale)
        else:  # mmdet BitmapMasks / PolygonMasks
            masks = masks.resize((masks.height * scale, masks.width * scale))
        upscaled.masks = masks
    return upscaled


def upscale_data_sample(data_sample: BaseDataElement,
                        scale: int) -> BaseDataElement:
    """A copy of a data sample for drawing on a ``scale`` times larger image.

    Every :obj:`InstanceData` field (``gt_instances``, ``pred_instances``,
    ...) gets :func:`upscale_instances`, every :obj:`PixelData` field
    (``gt_sem_seg``, ``pred_sem_seg``, ...) :func:`upscale_pixel_data`;
    the metainfo and other fields are kept as they are. The input is not
    modified.

    Args:
        data_sample (:obj:`BaseDataElement`): e.g. a ``DetDataSample`` or
            ``SegDataSample``.
        scale (int): Integer factor.

    Returns:
        :obj:`BaseDataElement`: The upscaled copy (same type).
    """
    check_scale(scale)
    upscaled = data_sample.new()
    for key, value in data_sample.items():
        if isinstance(value, InstanceData):
            setattr(upscaled, key, upscale_instances(value, scale))
        elif isinstance(value, PixelData):
            setattr(upscaled, key, upscale_pixel_data(value, scale))
    return upscaled


class UpscaleMixin:
    """Upscale the image and the data sample before the toolbox visualizer
    (the next class in the MRO) draws them in ``add_datasample``.

    Args:
        name (str): Name of the instance (mmengine's ``ManagerMixin``
            needs the argument by name). Default: 'visualizer'.
        scale (int): Integer upscaling factor. Default: 3.
        interpolation (str): Image interpolation, 'nearest' (crisp pixels,
            the label maps' blocks match them) or 'bilinear'.
            Default: 'nearest'.
        *args, **kwargs: The toolbox visualizer's other arguments.
    """

    def __init__(self, name: str = 'visualizer', *args, scale: int = 3,
                 interpolation: str = 'nearest', **kwargs) -> None:
        super().__init__(name, *args, **kwargs)
        self.scale = check_scale(scale)
        self.interpolation = check_interpolation(interpolation)

    @master_only
    def add_datasample(self, name: str, image: np.ndarray,
                       data_sample: Optional[BaseDataElement] = None,
                       *args, **kwargs) -> None:
        """The toolbox's ``add_datasample`` on the image and a copy of
        ``data_sample``, both upscaled by ``self.scale``; the other
        arguments (``draw_gt``, ``draw_pred``, ``out_file``,
        ``pred_score_thr``, ...) are passed on unchanged."""
        image = upscale_image(image, self.scale, self.interpolation)
        if data_sample is not None:
            data_sample = upscale_data_sample(data_sample.cpu(), self.scale)
        super().add_datasample(name, image, data_sample, *args, **kwargs)


__all__: List[str] = [
    'INTERPOLATIONS', 'check_scale', 'check_interpolation', 'upscale_image',
    'upscale_pixel_data', 'upscale_instances', 'upscale_data_sample',
    'UpscaleMixin'
]

try:
    from mmdet.registry import VISUALIZERS as DET_VISUALIZERS
    from mmdet.visualization import DetLocalVisualizer
except ImportError:  # no mmdet, or mmcv without its compiled ops
    DetLocalVisualizer = None

if DetLocalVisualizer is not None:

    @DET_VISUALIZERS.register_module()
    class UpscaledDetLocalVisualizer(UpscaleMixin, DetLocalVisualizer):
        """mmdet's ``DetLocalVisualizer`` drawing on a ``scale`` times
        larger image: boxes, masks and label maps are upscaled with it,
        labels and lines keep their size in pixels.

        Args:
            scale (int): Integer upscaling factor. Default: 3.
            interpolation (str): 'nearest' or 'bilinear'.
                Default: 'nearest'.
            **kwargs: ``DetLocalVisualizer``'s arguments (``name``,
                ``vis_backends``, ``save_dir``, ``bbox_color``,
                ``text_color``, ``mask_color``, ``line_width``, ``alpha``).
        """

    __all__.append('UpscaledDetLocalVisualizer')

try:
    from mmseg.registry import VISUALIZERS as SEG_VISUALIZERS
    from mmseg.visualization import SegLocalVisualizer
except ImportError:  # no mmsegmentation, or mmcv without its compiled ops
    SegLocalVisualizer = None

if SegLocalVisualizer is not None:

    @SEG_VISUALIZERS.register_module()
    class UpscaledSegLocalVisualizer(UpscaleMixin, SegLocalVisualizer):
        """mmseg's ``SegLocalVisualizer`` drawing on a ``scale`` times
        larger image: the label maps are upscaled with it (nearest), and
        the class labels, whose font grows with the image, become legible.

        Args:
            scale (int): Integer upscaling factor. Default: 3.
            interpolation (str): 'nearest' or 'bilinear'.
                Default: 'nearest'.
            **kwargs: ``SegLocalVisualizer``'s arguments (``name``,
                ``vis_backends``, ``save_dir``, ``classes``, ``palette``,
                ``dataset_name``, ``alpha``).
        """

    __all__.append('UpscaledSegLocalVisualizer')
