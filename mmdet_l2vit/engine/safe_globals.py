"""Let mmengine's own loader read mmengine checkpoints on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch
2.6 that means ``weights_only=True``, which refuses the ``HistoryBuffer``
objects and numpy arrays mmengine itself pickles into every runner
checkpoint, so ``--resume``, ``load_from`` and ``tools/test.py`` would fail.

Instead of replacing mmengine's loader, :func:`register_mmengine_safe_globals`
(called once when ``mmdet_l2vit`` is imported) adds exactly the classes a
runner checkpoint contains to torch's weights-only allow-list
(``torch.serialization.add_safe_globals``). mmengine's functions stay as they
are; anything outside the list is still refused by torch.

The allow-list, as found by saving real runner checkpoints (mmengine 0.10.7,
numpy 1.26, the demo Mask R-CNN with ``RNGStateHook``):

- ``mmengine.logging.history_buffer.HistoryBuffer`` (message hub scalars);
- ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``
  and the numeric ``numpy.dtypes.*DType`` classes (the buffers' arrays),
  ``numpy.core.multiarray.scalar`` (numpy scalars), each also under the
  ``numpy._core`` name numpy 2 writes;
- ``builtins.bytes`` (pickle protocol 2 writes empty ``bytes``, such as the
  data of an empty numpy array, as ``bytes()``);
- ``builtins.getattr``, mapped to :func:`history_buffer_statistic`, which
  serves only ``HistoryBuffer.min | max | current | mean`` (the statistics a
  buffer pickles) and refuses everything else. The real ``getattr`` is never
  allowed.

``_codecs.encode``, ``collections.OrderedDict`` / ``Counter``, ``set``,
``complex``, ``torch.device`` and the tensor rebuilds are in torch's default
list already.
"""
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

#: ``HistoryBuffer`` methods a pickled buffer refers to (its default
#: statistics, pickled as ``getattr(HistoryBuffer, name)``).
HISTORY_BUFFER_STATISTICS: Tuple[str, ...] = ('min', 'max', 'current', 'mean')

#: numpy dtype classes a runner checkpoint may hold arrays or scalars of.
#: (The platform aliases such as ``LongDType`` are the same classes.)
_NUMPY_DTYPE_CLASSES: Tuple[str, ...] = (
    'BoolDType', 'Int8DType', 'Int16DType', 'Int32DType', 'Int64DType',
    'UInt8DType', 'UInt16DType', 'UInt32DType', 'UInt64DType',
    'LongLongDType', 'ULongLongDType', 'Float16DType', 'Float32DType',
    'Float64DType', 'LongDoubleDType', 'Complex64DType', 'Complex128DType',
    'CLongDoubleDType')

SafeGlobal = Union[Callable, Tuple[Callable, str]]


def history_buffer_statistic(owner: Any, name: str, *default: Any) -> Any:
    """Stand-in for ``builtins.getattr`` while unpickling a checkpoint.

    A pickled ``HistoryBuffer`` refers to its statistics methods as
    ``getattr(HistoryBuffer, 'min')`` (and ``max``, ``current``, ``mean``).
    This function returns exactly those and refuses any other owner, name or
    a default argument, so allow-listing it under the name
    ``builtins.getattr`` does not allow attribute access in general.

    Args:
        owner (Any): The object ``getattr`` was pickled with.
        name (str): The attribute name.
        *default (Any): ``getattr``'s optional default; always refused.

    Returns:
        Callable: ``getattr(HistoryBuffer, name)``.

    Raises:
        pickle.UnpicklingError: For anything but the statistics above.
    """
    if (owner is HistoryBuffer and not default and isinstance(name, str)
            and name in HISTORY_BUFFER_STATISTICS):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({owner!r}, {name!r}) while loading a checkpoint: '
        'only HistoryBuffer.' + '|'.join(HISTORY_BUFFER_STATISTICS) +
        ' are allowed')


def _numpy_module() -> Any:
    """numpy's ``multiarray`` module without numpy 2's deprecation path."""
    core = getattr(np, '_core', None)
    multiarray = getattr(core, 'multiarray', None)
    return multiarray if multiarray is not None else np.core.multiarray


def numpy_safe_globals() -> List[SafeGlobal]:
    """The numpy classes and functions that rebuild arrays and scalars.

    Returns:
        list: Entries for ``torch.serialization.add_safe_globals``; the
        rebuild functions are listed under both the numpy 1 name
        (``numpy.core.multiarray``) and the numpy 2 one
        (``numpy._core.multiarray``).
    """
    multiarray = _numpy_module()
    found: List[SafeGlobal] = [np.ndarray, np.dtype]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        found.append((multiarray._reconstruct, f'{module}._reconstruct'))
        found.append((multiarray.scalar, f'{module}.scalar'))
    dtypes = getattr(np, 'dtypes', None)
    for name in _NUMPY_DTYPE_CLASSES:
        dtype_cls = getattr(dtypes, name, None)
        if dtype_cls is not None and dtype_cls not in found:
            found.append(dtype_cls)
    return found


def mmengine_safe_globals() -> List[SafeGlobal]:
    """Everything an mmengine runner checkpoint needs beyond torch's list.

    Returns:
        list: Entries for ``torch.serialization.add_safe_globals``.
    """
    return [
        HistoryBuffer,
        (history_buffer_statistic, 'builtins.getattr'),
        bytes,
        *numpy_safe_globals(),
    ]


def register_mmengine_safe_globals() -> None:
    """Add :func:`mmengine_safe_globals` to torch's weights-only allow-list.

    Idempotent (torch keeps the entries in a set).
    """
    torch.serialization.add_safe_globals(mmengine_safe_globals())
