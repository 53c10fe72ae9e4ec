"""mmdet_l2vit: L²ViT and InLine backbones for mmdet and mmsegmentation.

Importing the package registers the backbones into mmdet's and mmseg's
``MODELS`` registries (whichever is installed) and adds the classes mmengine
pickles into its own checkpoints to torch's weights-only allow-list, so that
mmengine loads them on torch >= 2.6 (see :mod:`mmdet_l2vit.engine`). No
function of mmengine is replaced.
"""
from .version import __version__
from . import engine  # noqa: F401  (allow-list for mmengine checkpoints)
from .models import *  # noqa: F401,F403

__all__ = ['__version__']
