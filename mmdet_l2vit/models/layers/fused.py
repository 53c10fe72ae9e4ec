"""Fused Linear / conv epilogues for CPU inference through oneDNN.

PyTorch ships oneDNN's fused kernels as eager ops
(``torch.ops.mkldnn._linear_pointwise`` and ``_convolution_pointwise``, the
ones TorchInductor emits): a Linear with its GELU or its residual add applied
in the GEMM's epilogue, and a conv with its GELU. They give bit-identical
results to the unfused sequence but skip whole passes over the activations
(and the bias broadcast ``F.linear`` copies into every output).

They have no autograd formula, so they are used only for float32 CPU tensors
with gradients disabled (``torch.no_grad()``/``inference_mode``: testing,
inference), outside autocast and outside tracing / ``torch.compile`` (which
do their own fusion); everything else takes the plain path.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = (torch.backends.mkldnn.is_available()
           and hasattr(torch.ops.mkldnn, '_linear_pointwise')
           and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


def onednn_fusable(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN kernels may serve ``x`` (see module doc)."""
    return (_ONEDNN and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu')
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def linear(x: torch.Tensor,
           layer: nn.Linear,
           gelu: bool = False,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``layer(x)``, then exact GELU if ``gelu``, then ``+ residual``.

    Args:
        x (Tensor): Input (..., in_features).
        layer (nn.Linear): The layer.
        gelu (bool): Apply exact (erf) GELU to the output.
        residual (Tensor, optional): Added to the output (same shape).

    Returns:
        Tensor: (..., out_features).
    """
    if onednn_fusable(x) and not (gelu and residual is not None):
        x = x.contiguous()
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(
                x, residual.contiguous(), layer.weight, layer.bias, 'add')
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(
                x, layer.weight, layer.bias, 'gelu', [], 'none')
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias,
                                                  'none', [], '')
    out = F.linear(x, layer.weight, layer.bias)
    if gelu:
        out = F.gelu(out)
    if residual is not None:
        out = out + residual
    return out


def conv2d_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``gelu(conv(x))`` with the GELU fused when possible (stride 1,
    symmetric int padding)."""
    if onednn_fusable(x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
            list(conv.dilation), conv.groups, 'gelu', [], 'none')
    return F.gelu(conv(x))
