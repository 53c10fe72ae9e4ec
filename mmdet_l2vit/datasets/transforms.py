"""A data-pipeline check for semantic label maps."""
from typing import Dict, Optional

import numpy as np
from mmcv.transforms import BaseTransform

from ..registry import register_into_toolboxes


class LabelMapError(ValueError):
    """A label map with values outside the dataset's classes."""


def check_label_values(values: np.ndarray, num_classes: int,
                       ignore_index: int, reduce_zero_label: bool,
                       path: str) -> None:
    """Raise :class:`LabelMapError` if a label map has values that are
    neither a class index nor ``ignore_index``.

    Args:
        values (np.ndarray): The distinct values of the map *after*
            ``reduce_zero_label`` (what the loss sees).
        num_classes (int): Number of classes.
        ignore_index (int): The ignored label.
        reduce_zero_label (bool): Whether the file values were shifted by
            one (ADE20K: file value ``v`` is class ``v - 1``, 0 ignored).
        path (str): File name for the message.
    """
    bad = [int(v) for v in values
           if not (0 <= v < num_classes or v == ignore_index)]
    if not bad:
        return
    shift = 1 if reduce_zero_label else 0
    file_values = sorted({v + shift for v in bad})
    valid = (f'1..{num_classes} (0 = ignored "other")'
             if reduce_zero_label else f'0..{num_classes - 1}')
    raise LabelMapError(
        f'label map {path} has values {file_values[:10]} outside the '
        f'{num_classes} classes of the dataset: valid file values are '
        f'{valid}, or {ignore_index} for "ignore". Check that the PNGs are '
        'single-channel class-index maps (not colour images) and that '
        '`metainfo.classes` / `reduce_zero_label` match the data.')


@register_into_toolboxes('TRANSFORMS')
class CheckSegLabels(BaseTransform):
    """Fail with a clear message on out-of-range label-map values.

    Put it right after ``LoadAnnotations`` in a segmentation pipeline.
    Without it, a bad value surfaces later as an index error inside the
    loss (or a device-side assert on a GPU) that does not name the file.

    Keys: ``gt_seg_map`` (without it, e.g. in inference pipelines, the
    step does nothing), ``seg_map_path``, ``reduce_zero_label``.

    Args:
        num_classes (int): Number of classes of the dataset.
        ignore_index (int): The ignored label. Default: 255.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: Dict) -> Optional[Dict]:
        seg = results.get('gt_seg_map')
        if seg is None:  # inference pipelines drop LoadAnnotations
            return results
        low, high = int(seg.min()), int(seg.max())
        if low >= 0 and (high < self.num_classes
                         or high == self.ignore_index and np.all(
                             (seg < self.num_classes)
                             | (seg == self.ignore_index))):
            return results
        check_label_values(
            np.unique(seg), self.num_classes, self.ignore_index,
            bool(results.get('reduce_zero_label', False)),
            results.get('seg_map_path', '<unknown file>'))
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index})')
