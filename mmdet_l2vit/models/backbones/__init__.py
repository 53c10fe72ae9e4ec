"""Backbones, each registered into mmdet's and mmseg's MODELS."""
from .l2vit import L2ViT

__all__ = ['L2ViT']
