"""Peak of live tensor memory, counted at the ATen level on any device.

CPU PyTorch has no ``max_memory_allocated``; peak RSS counts the allocator's
heap slack and first-touch pages as well. :class:`LiveTensorPeak` counts what
the CUDA counter counts: the bytes of tensor storages created while it is
active that are still referenced, with their maximum over time. Storages that
existed before (parameters, the input) are not counted, nor are an operator's
internal scratch buffers.
"""
from typing import Any, Dict, Optional, Tuple

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorPeak(TorchDispatchMode):
    """Track the bytes of live tensor storages created under this mode.

    Every ATen call (forward, autograd backward, custom autograd functions)
    passes through :meth:`__torch_dispatch__`. Outputs whose storage is not
    one of the call's inputs' (views and in-place results reuse theirs) are
    new allocations; they stay counted until their storage is freed, which
    is checked through a weak reference before each call.

    Example:
        >>> with LiveTensorPeak() as tracker:
        ...     model(x).sum().backward()
        >>> tracker.peak_bytes
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def release_freed(self) -> None:
        """Stop counting storages that have been freed since the last call."""
        freed = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in freed:
            self.current_bytes -= self._live.pop(key)[1]

    def _track(self, tensor: torch.Tensor, input_keys: set) -> None:
        if tensor.device.type == 'meta':
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        known = self._live.get(key)
        if known is not None and not known[0].expired():
            return
        if known is None and key in input_keys:
            return  # a view or in-place result of a storage made before
        if known is not None:  # the address was freed and reused
            self.current_bytes -= known[1]
        self._live[key] = (StorageWeakRef(storage), storage.nbytes())
        self.current_bytes += storage.nbytes()

    def __torch_dispatch__(self,
                           func: Any,
                           types: Any,
                           args: tuple = (),
                           kwargs: Optional[dict] = None) -> Any:
        self.release_freed()
        out = func(*args, **(kwargs or {}))
        input_keys = {
            a.untyped_storage()._cdata
            for a in tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor) and a.device.type != 'meta'
        }
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf, input_keys)
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out
