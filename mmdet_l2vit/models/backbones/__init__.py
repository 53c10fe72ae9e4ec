"""Backbones, each registered into mmdet's and mmseg's MODELS."""
from .inline_pvt import InLinePVT
from .inline_swin import InLineSwin
from .l2vit import L2ViT

__all__ = ['L2ViT', 'InLinePVT', 'InLineSwin']
