"""mmdet_l2vit: L²ViT and InLine backbones for mmdet and mmsegmentation."""
from .version import __version__

__all__ = ['__version__']
