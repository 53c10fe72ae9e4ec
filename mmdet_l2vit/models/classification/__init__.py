"""The official classification models, sharing the backbones' code, and
their entries in timm's registry (registered on import)."""
from .classifiers import (CLASSIFIER_CLASSES, InLinePVTClassifier,
                          InLineSwinClassifier, L2ViTClassifier)
from . import timm_models  # noqa: F401  (timm registry entries)

__all__ = [
    'L2ViTClassifier', 'InLinePVTClassifier', 'InLineSwinClassifier',
    'CLASSIFIER_CLASSES'
]
