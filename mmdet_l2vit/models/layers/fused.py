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


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` saving only ``h`` for backward.

    Autograd would keep both the GELU input and its output (the Linear's
    input): two (N, hidden) tensors per MLP. This keeps one and recomputes
    the GELU in backward, cutting an MLP's saved activations by half.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad_h = grad_weight = grad_bias = None
        grad_2d = grad_out
        if ctx.needs_input_grad[0]:
            grad_act = grad_2d @ weight.to(grad_2d.dtype)
            grad_h = torch.ops.aten.gelu_backward(grad_act, h)
        if ctx.needs_input_grad[1]:
            act = F.gelu(h)
            grad_weight = (grad_2d.t() @ act.to(grad_2d.dtype)).to(
                weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0).to(weight.dtype)
        return grad_h, grad_weight, grad_bias


def gelu_linear(h: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(gelu(h))``; when gradients are recorded, without keeping the
    GELU output alive for backward (see :class:`_GeluLinear`)."""
    if (torch.is_grad_enabled() and not torch.is_autocast_enabled(
            h.device.type) and not torch.jit.is_tracing()):
        # 2-D inside the Function: its output must not be a view
        out = _GeluLinear.apply(h.reshape(-1, h.shape[-1]), layer.weight,
                                layer.bias)
        return out.view(*h.shape[:-1], out.shape[-1])
    return layer(F.gelu(h))


class _LayerNormLinear(torch.autograd.Function):
    """``linear(layer_norm(x))`` saving ``x`` (and the LN statistics) but not
    the normalised tensor, which backward recomputes (one cheap pass)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, norm_weight: torch.Tensor,
                norm_bias: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        shape = (x.shape[-1], )
        normed, mean, rstd = torch.native_layer_norm(x, shape, norm_weight,
                                                     norm_bias, eps)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return F.linear(normed, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        shape = (x.shape[-1], )
        normed = torch.native_layer_norm(x, shape, norm_weight, norm_bias,
                                         ctx.eps)[0]
        grad_weight = grad_out.t() @ normed
        grad_bias = grad_out.sum(0) if ctx.has_bias else None
        grad_normed = grad_out @ weight
        grad_x, grad_norm_weight, grad_norm_bias = \
            torch.ops.aten.native_layer_norm_backward(
                grad_normed, x, shape, mean, rstd, norm_weight, norm_bias,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 ctx.needs_input_grad[2]])
        return (grad_x, grad_norm_weight, grad_norm_bias, None, grad_weight,
                grad_bias)


def layer_norm_linear(x: torch.Tensor, norm: nn.LayerNorm,
                      layer: nn.Linear) -> torch.Tensor:
    """``layer(norm(x))``; when gradients are recorded (float32, no
    autocast), without keeping the normalised tensor alive for backward."""
    if (torch.is_grad_enabled() and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.jit.is_tracing() and norm.elementwise_affine
            and x.shape[-1] == norm.normalized_shape[0]):
        out = _LayerNormLinear.apply(x.reshape(-1, x.shape[-1]), norm.weight,
                                     norm.bias, norm.eps, layer.weight,
                                     layer.bias)
        return out.view(*x.shape[:-1], out.shape[-1])
    return linear(norm(x), layer)
