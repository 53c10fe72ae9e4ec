"""Training memory: LayerNorm and GELU outputs are recomputed in backward.

Autograd keeps the input of every Linear (and of the LCM's BatchNorm) for
backward. After a LayerNorm or a GELU that input is a full-size map of its
own, although the LayerNorm's input and statistics (or the GELU's input)
are kept anyway, by the norm's (or the GELU's) own backward. Inside
:func:`recompute_norms_and_gelus`, a saved tensor that is such an output,
or a view of one, is stored as a recipe (those tensors autograd keeps
anyway) and recomputed when backward needs it: one cheap elementwise pass
instead of one full-size map per pre-norm and per MLP held from forward to
backward.

The model code stays the plain computation (``fc2(gelu(fc1(norm(x))))``);
the backbone turns this on in one place, its ``forward``, whenever autograd
records. Gradients equal plain autograd's to float32 rounding (the
recomputed LayerNorm is ``(x - mean) * rstd * weight + bias`` from the saved
statistics).
"""
import contextlib
from typing import Any, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.module import register_module_forward_hook

_LAYER_NORM = 'NativeLayerNormBackward0'
_GELU = 'GeluBackward0'
_RECOMPUTABLE = (_LAYER_NORM, _GELU)
#: Attribute of a LayerNorm module's output tensor: the module's ``eps``.
_EPS_ATTR = '_mmdet_l2vit_layer_norm_eps'


class _Recipe(NamedTuple):
    """How to rebuild a saved LayerNorm / GELU output (or a view of it)."""
    op: str
    inputs: Tuple[Any, ...]
    approximate: str
    eps: float
    size: torch.Size
    stride: Tuple[int, ...]
    offset: int


def _op_name(node: Any) -> Optional[str]:
    return None if node is None else type(node).__name__


def _pack(tensor: torch.Tensor) -> Any:
    """Saved-tensor pack hook: a recipe for LayerNorm / GELU outputs."""
    base = tensor if tensor._base is None else tensor._base
    node = base.grad_fn
    op = _op_name(node)
    # A contiguous output whose own input is not a recipe (reading it
    # would recompute it here, in forward).
    if (op not in _RECOMPUTABLE or not base.is_contiguous()
            or _op_name(node.next_functions[0][0]) in _RECOMPUTABLE):
        return tensor
    eps = getattr(base, _EPS_ATTR, None)
    if op == _LAYER_NORM:
        if eps is None:
            return tensor  # not a module's output: its eps is unknown
        inputs = (node._saved_input, node._saved_weight, node._saved_bias,
                  tuple(node._saved_normalized_shape))
        approximate = ''
    else:
        inputs, approximate = (node._saved_self, ), node._saved_approximate
    return _Recipe(op, inputs, approximate, eps, tensor.size(),
                   tensor.stride(),
                   tensor.storage_offset() - base.storage_offset())


def _unpack(packed: Any) -> torch.Tensor:
    """Saved-tensor unpack hook: rebuild what :func:`_pack` described."""
    if not isinstance(packed, _Recipe):
        return packed
    with torch.no_grad():
        if packed.op == _LAYER_NORM:
            x, weight, bias, shape = packed.inputs
            out = torch.native_layer_norm(x, shape, weight, bias,
                                          packed.eps)[0]
        else:
            out = F.gelu(packed.inputs[0], approximate=packed.approximate)
    return out.as_strided(packed.size, packed.stride, packed.offset)


@contextlib.contextmanager
def recompute_norms_and_gelus(enabled: bool = True) -> Iterator[None]:
    """Inside, autograd stores LayerNorm / GELU outputs as recipes.

    Args:
        enabled (bool): Whether to install the hooks (off: a no-op).
    """
    if not enabled:
        yield
        return
    handle = register_module_forward_hook(_note_layer_norm_eps)
    try:
        with saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        handle.remove()


def _note_layer_norm_eps(module: nn.Module, inputs: Any,
                         output: Any) -> None:
    """Forward hook: note a LayerNorm module's ``eps`` on its output."""
    if isinstance(module, nn.LayerNorm) and isinstance(output, torch.Tensor):
        setattr(output, _EPS_ATTR, module.eps)


def saves_memory_here() -> bool:
    """Whether the recomputation applies: autograd records, outside
    tracing and ``torch.compile`` (which plan their own recomputation)."""
    return (torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())
