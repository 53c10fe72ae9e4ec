"""Runtime integration with mmengine."""
from .checkpoint_loader import load_local_checkpoint

__all__ = ['load_local_checkpoint']
