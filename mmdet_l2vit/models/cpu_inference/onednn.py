"""oneDNN fused epilogues (float32 CPU inference only).

PyTorch ships oneDNN's fused kernels as eager ops
(``torch.ops.mkldnn._linear_pointwise`` and ``_convolution_pointwise``, the
ones TorchInductor emits): a Linear with its GELU or its residual add applied
in the GEMM's epilogue, a conv with its GELU or ReLU. They give the results of
the unfused sequence but skip whole passes over the activations (and the bias
broadcast ``F.linear`` copies into every output). They have no autograd
formula: the engine calls them only where :func:`cpu_inference_applies`
holds (float32 CPU tensors, autograd and autocast off).
"""
from typing import Tuple

import torch
from torch import nn

#: Whether this torch build has the fused oneDNN kernels.
ONEDNN_AVAILABLE = (torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, '_linear_pointwise')
                    and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` through oneDNN, (..., in) -> (..., out)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), layer.weight,
                                              layer.bias, 'none', [], '')


def linear_gelu(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``gelu(layer(x))`` (exact GELU) with the GELU in the GEMM epilogue."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), layer.weight,
                                              layer.bias, 'gelu', [], 'none')


def linear_add(x: torch.Tensor, layer: nn.Linear,
               residual: torch.Tensor) -> torch.Tensor:
    """``layer(x) + residual`` with the add in the GEMM epilogue (a new
    tensor; ``residual`` has the output's shape)."""
    return torch.ops.mkldnn._linear_pointwise.binary(
        x.contiguous(), residual.contiguous(), layer.weight, layer.bias,
        'add')


def mlp_add(x: torch.Tensor, mlp: nn.Module,
            residual: torch.Tensor) -> torch.Tensor:
    """``mlp.fc2(gelu(mlp.fc1(x))) + residual``, both epilogues fused.

    Args:
        x (Tensor): (..., C) normalised tokens.
        mlp (nn.Module): The block's MLP (``fc1``, exact GELU, ``fc2``).
        residual (Tensor): (..., C) skip connection.

    Returns:
        Tensor: (..., C), a new tensor.
    """
    return linear_add(linear_gelu(x, mlp.fc1), mlp.fc2, residual)


def conv2d_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``gelu(conv(x))`` with the GELU fused (NCHW or channels-last ``x``;
    int padding)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
        list(conv.dilation), conv.groups, 'gelu', [], 'none')


def conv2d_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                conv: nn.Conv2d) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias))`` with the ReLU fused, with the
    padding, stride, dilation and groups of ``conv`` (e.g. a kernel with a
    BatchNorm folded in, :func:`fold_batchnorm`)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, list(conv.padding), list(conv.stride),
        list(conv.dilation), conv.groups, 'relu', [], '')


def fold_batchnorm(conv: nn.Conv2d,
                   bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, with the running
    statistics (eval-mode BatchNorm); new tensors, the modules are unchanged.

    Equal to the two ops up to float32 rounding.
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    return weight, (bias - bn.running_mean) * scale + bn.bias
