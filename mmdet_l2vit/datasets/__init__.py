"""Datasets: the synthetic demo data, data checks and a label-map check.

Importing this module registers :class:`CheckSegLabels` into the toolboxes'
``TRANSFORMS`` (configs list it in ``custom_imports``).
"""
from .checks import DatasetError, check_config_data
from .demo_data import (DEFAULT_ROOT, SEG_CLASSES, SEG_PALETTE,
                        demo_data_ready, ensure_demo_data, generate_demo_data)
from .shapes import SHAPE_CLASSES, SHAPE_PALETTE, render_scene
from .transforms import CheckSegLabels, LabelMapError

__all__ = [
    'DatasetError', 'check_config_data', 'DEFAULT_ROOT', 'SEG_CLASSES',
    'SEG_PALETTE', 'demo_data_ready', 'ensure_demo_data',
    'generate_demo_data', 'SHAPE_CLASSES', 'SHAPE_PALETTE', 'render_scene',
    'CheckSegLabels', 'LabelMapError'
]
