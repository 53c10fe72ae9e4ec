"""mmdet_l2vit: L²ViT and InLine backbones for mmdet and mmsegmentation.

Importing the package registers the backbones into mmdet's and mmseg's
``MODELS`` registries (whichever is installed) and makes mmengine load its
own checkpoints on torch >= 2.6 (see :mod:`mmdet_l2vit.engine`).
"""
from .version import __version__
from . import engine  # noqa: F401  (checkpoint loader fix)
from .models import *  # noqa: F401,F403

__all__ = ['__version__']
