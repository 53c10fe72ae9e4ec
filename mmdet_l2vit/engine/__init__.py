"""Runtime integration with mmengine: checkpoint loading and hooks."""
from .checkpoint_loader import load_local_checkpoint
from .hooks import RNGStateHook, StepRecordHook

__all__ = ['load_local_checkpoint', 'RNGStateHook', 'StepRecordHook']
