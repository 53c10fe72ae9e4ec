"""Runtime integration with mmengine: checkpoint allow-list, hooks and the
layer-wise learning-rate decay constructor (:mod:`.layer_decay`).

Importing it adds the classes mmengine pickles into its runner checkpoints to
torch's weights-only allow-list (:mod:`.safe_globals`), so that mmengine's own,
unmodified loader reads them on torch >= 2.6.
"""
from .hooks import RNGStateHook, StepRecordHook
from .layer_decay import BackboneLayerDecayOptimWrapperConstructor
from .safe_globals import (history_buffer_statistic, mmengine_safe_globals,
                           register_mmengine_safe_globals)

register_mmengine_safe_globals()

__all__ = [
    'BackboneLayerDecayOptimWrapperConstructor', 'RNGStateHook',
    'StepRecordHook', 'history_buffer_statistic',
    'mmengine_safe_globals', 'register_mmengine_safe_globals'
]
