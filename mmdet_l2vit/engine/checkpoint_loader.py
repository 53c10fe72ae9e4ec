"""Let mmengine load its own checkpoints on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch
2.6 that means ``weights_only=True``, which rejects the ``HistoryBuffer``
objects and numpy arrays mmengine itself pickles into every checkpoint, so
``--resume``, ``load_from`` and ``tools/test.py`` fail. Importing
``mmdet_l2vit`` (which every config does through ``custom_imports``)
replaces mmengine's local-file loader with one that reads tensor-only files
as before and everything else with a restricted unpickler that knows the
classes mmengine checkpoints contain. No environment variable is needed.

A file that needs other classes is refused with an explanation; set
``MMDET_L2VIT_TRUST_CHECKPOINTS=1`` to read files you trust with full pickle.
"""
import os
import os.path as osp
import pickle
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint import (_SAFE_GLOBALS, TRUSTED_PICKLE, _PickleModule,
                          _RestrictedUnpickler)

TRUST_ENV = 'MMDET_L2VIT_TRUST_CHECKPOINTS'


def _history_buffer_method(owner: Any, name: str) -> Any:
    """``getattr`` restricted to what mmengine pickles: public methods of
    ``HistoryBuffer`` (its registered statistics such as ``min``)."""
    if owner is not HistoryBuffer or name.startswith('_'):
        raise pickle.UnpicklingError(
            f'refusing getattr({owner!r}, {name!r}) while unpickling')
    return getattr(owner, name)


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    multiarray = np.core.multiarray
    found = {}
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        found[(module, '_reconstruct')] = multiarray._reconstruct
        found[(module, 'scalar')] = multiarray.scalar
    found[('numpy', 'dtype')] = np.dtype
    found[('numpy', 'ndarray')] = np.ndarray
    for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType',
                 'BoolDType', 'UInt8DType'):
        dtype_cls = getattr(getattr(np, 'dtypes', None), name, None)
        if dtype_cls is not None:
            found[('numpy.dtypes', name)] = dtype_cls
    return found


class _MMEngineUnpickler(_RestrictedUnpickler):
    safe_globals = {
        **_SAFE_GLOBALS,
        **_numpy_globals(),
        ('mmengine.logging.history_buffer', 'HistoryBuffer'): HistoryBuffer,
        ('builtins', 'getattr'): _history_buffer_method,
        ('_codecs', 'encode'): __import__('codecs').encode,
        ('builtins', 'slice'): slice,
        ('builtins', 'complex'): complex,
        ('torch', 'device'): torch.device,
    }


MMENGINE_PICKLE = _PickleModule(_MMEngineUnpickler)


def load_local_checkpoint(filename: str,
                          map_location: Optional[Any] = None) -> Any:
    """Load a local checkpoint the way mmengine did before torch 2.6, safely.

    Args:
        filename (str): Path of the checkpoint.
        map_location: As for ``torch.load``.

    Returns:
        Any: The checkpoint object.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if os.environ.get(TRUST_ENV) == '1':
        return torch.load(filename, map_location=map_location,
                          weights_only=False, pickle_module=TRUSTED_PICKLE)
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as e:
        if 'Weights only load failed' not in str(e):
            raise
    return torch.load(filename, map_location=map_location,
                      weights_only=False, pickle_module=MMENGINE_PICKLE)


CheckpointLoader.register_scheme(prefixes='', force=True)(
    load_local_checkpoint)
