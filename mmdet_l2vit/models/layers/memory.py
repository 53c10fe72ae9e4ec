"""Training memory and speed: the autograd machinery around the reference
modules, which the backbone turns on in one place, its ``forward``.

- Memory: LayerNorm and GELU outputs are recomputed in backward
  (:func:`recompute_norms_and_gelus`, below).
- Speed, on the CPU (:func:`cpu_backward_routes`, at the end): the
  gradients of the larger depthwise convs are computed with forward
  depthwise convs (:class:`SameDepthwiseConv2d`), the weight gradients of
  strided dense convs with GEMMs (:class:`StridedConv2d`), the
  gradients of an MLP's ``fc2(gelu(h))`` in row chunks
  (:class:`GeluLinear`), and L²ViT's ReLU linear attention as one node
  with a hand-written backward (:class:`ReluLinearAttention`).

Memory. Autograd keeps the input of every Linear (and of the LCM's
BatchNorm) for backward. After a LayerNorm or a GELU that input is a
full-size map of its own, although the LayerNorm's input and statistics (or
the GELU's input) are kept anyway, by the norm's (or the GELU's) own
backward. Inside :func:`recompute_norms_and_gelus`, a saved tensor that is
such an output, or a view of one, is stored as a recipe (those tensors
autograd keeps anyway) and recomputed when backward needs it: one cheap
elementwise pass instead of one full-size map per pre-norm and per MLP held
from forward to backward.

The model code stays the plain computation (``fc2(gelu(fc1(norm(x))))``);
the backbone turns this on in one place, its ``forward``, whenever autograd
records. Gradients equal plain autograd's to float32 rounding (the
recomputed LayerNorm is ``(x - mean) * rstd * weight + bias`` from the saved
statistics).
"""
import contextlib
import contextvars
from typing import Any, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.module import register_module_forward_hook
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from .l2vit_attention import (linear_attention_denominator,
                              relu_linear_attention)

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


# ------------------------------------------------- depthwise conv gradients
class SameDepthwiseConv2d(torch.autograd.Function):
    """Stride-1 depthwise ``Conv2d`` with zero padding ``k // 2`` (odd
    kernels) whose gradients are computed with forward depthwise convs.

    ``apply(input, weight, bias)``: ``input`` (B, C, H, W), ``weight``
    (C, 1, kh, kw), ``bias`` (C,) or ``None``. The forward is
    ``F.conv2d(input, weight, bias, padding=(kh // 2, kw // 2), groups=C)``
    (bit-identical outputs); like plain autograd it saves only ``input``
    and ``weight``. In backward:

    - the input gradient is the depthwise conv of the output gradient with
      the flipped kernel (same padding);
    - the weight gradient correlates the zero-padded input with the output
      gradient, see :func:`depthwise_weight_grad`;
    - the bias gradient sums the output gradient over (B, H, W).
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        return F.conv2d(input, weight, bias, 1, same_padding(weight), 1,
                        weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = F.conv2d(grad_output, weight.flip((-2, -1)), None, 1,
                                  same_padding(weight), 1, weight.shape[0])
        if needs_weight:
            grad_weight = depthwise_weight_grad(input, grad_output,
                                                weight.shape[-2:])
        if needs_bias:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias


def same_padding(weight: torch.Tensor) -> Tuple[int, int]:
    """The zero padding ``(kh // 2, kw // 2)`` that keeps the size."""
    return weight.shape[-2] // 2, weight.shape[-1] // 2


#: Output-gradient rows per weight-gradient conv. Measured on the CPU at
#: L2ViT-T's 1024x1024 shapes: 16 or 32 rows are equally fast, 1.3-1.4x
#: faster than whole maps, and as exact as oneDNN's backward (relative
#: error to float64 2e-6, whole maps 1e-5; stage 1, 7x7).
WEIGHT_GRAD_BAND_ROWS = 32


def depthwise_weight_grad(input: torch.Tensor, grad_output: torch.Tensor,
                          kernel_size: Tuple[int, int]) -> torch.Tensor:
    """The weight gradient of a stride-1 'same' depthwise conv.

    ``grad[c, 0, i, j] = sum_{b, h, w} pad(input)[b, c, h + i, w + j] *
    grad_output[b, c, h, w]``. Per image and per band of
    :data:`WEIGHT_GRAD_BAND_ROWS` output-gradient rows, this is a depthwise
    conv of the band's input rows (with their ``kh - 1`` halo rows) by the
    band of the output gradient as the kernel: ``(kh, kw)`` outputs, summed
    over the bands. On channels-last maps every band is a slice, no copy
    (only the first and last bands are zero-padded).

    Args:
        input (Tensor): (B, C, H, W) conv input.
        grad_output (Tensor): (B, C, H, W) output gradient.
        kernel_size (tuple[int, int]): (kh, kw), both odd.

    Returns:
        Tensor: (C, 1, kh, kw).
    """
    channels, height = input.shape[1], input.shape[2]
    pad_h, pad_w = kernel_size[0] // 2, kernel_size[1] // 2
    grad = None
    for image, grad_image in zip(input.split(1), grad_output.split(1)):
        kernels = grad_image.transpose(0, 1)  # (C, 1, H, W)
        for top in range(0, height, WEIGHT_GRAD_BAND_ROWS):
            bottom = min(top + WEIGHT_GRAD_BAND_ROWS, height)
            rows = _rows_with_zero_halo(image, top - pad_h, bottom + pad_h)
            part = F.conv2d(rows, kernels[:, :, top:bottom], None, 1,
                            (0, pad_w), 1, channels)
            grad = part if grad is None else grad.add_(part)
    return grad.view(channels, 1, *kernel_size)


def _rows_with_zero_halo(x: torch.Tensor, top: int,
                         bottom: int) -> torch.Tensor:
    """Rows ``top:bottom`` of a (B, C, H, W) map, zero where they fall
    outside it."""
    height = x.shape[2]
    rows = x[:, :, max(top, 0):min(bottom, height)]
    if top < 0 or bottom > height:
        rows = F.pad(rows, (0, 0, max(-top, 0), max(bottom - height, 0)))
    return rows


#: Smallest kernel area (kh * kw) routed through :class:`SameDepthwiseConv2d`
#: (measured on the CPU: faster from 5x5 on; oneDNN's own 3x3 backward is
#: faster than the forward convs).
ROUTED_MIN_KERNEL_AREA = 25


def _same_depthwise_conv_args(input: Any, weight: Any, bias: Any = None,
                              stride: Any = 1, padding: Any = 0,
                              dilation: Any = 1, groups: int = 1
                              ) -> Optional[Tuple[Any, ...]]:
    """``(input, weight, bias)`` of an ``F.conv2d`` call to route through
    :class:`SameDepthwiseConv2d` (a float32/64 CPU stride-1 'same'
    depthwise conv with a kernel of at least
    :data:`ROUTED_MIN_KERNEL_AREA` taps that autograd records, outside CPU
    autocast); else ``None``."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if not all(type(t) in (torch.Tensor, nn.Parameter) for t in tensors):
        return None
    if (input.dim() != 4 or weight.dim() != 4
            or input.dtype not in (torch.float32, torch.float64)
            or any(t.dtype != input.dtype or t.device.type != 'cpu'
                   for t in tensors)):
        return None
    channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    if (groups != channels or input.shape[1] != channels
            or weight.shape[1] != 1 or kh % 2 == 0 or kw % 2 == 0
            or kh * kw < ROUTED_MIN_KERNEL_AREA):
        return None
    if padding != 'same' and _pair(padding) != (kh // 2, kw // 2):
        return None
    if _pair(stride) != (1, 1) or _pair(dilation) != (1, 1):
        return None
    if (not torch.is_grad_enabled() or torch.is_autocast_enabled('cpu')
            or not any(t.requires_grad for t in tensors)):
        return None
    return input, weight, bias


# ------------------------------------------- strided dense conv gradients
class StridedConv2d(torch.autograd.Function):
    """Dense (``groups=1``) ``Conv2d`` with a stride above 1 and zero
    padding (stems, downsampling and patch embeddings) whose weight gradient
    is computed with GEMMs over bands of output rows.

    ``apply(input, weight, bias, stride, padding)``: the forward is
    ``F.conv2d(input, weight, bias, stride, padding)`` (bit-identical
    outputs); like plain autograd it saves only ``input`` and ``weight``.
    In backward the input gradient is oneDNN's (``convolution_backward``
    asked for it alone), the weight gradient is
    :func:`strided_conv_weight_grad`, the bias gradient sums the output
    gradient over (B, H, W).
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor], stride: Tuple[int, int],
                padding: Tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(input, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = torch.ops.aten.convolution_backward(
                grad_output, input, weight, None, ctx.stride, ctx.padding,
                (1, 1), False, (0, 0), 1, (True, False, False))[0]
        if needs_weight:
            grad_weight = strided_conv_weight_grad(
                input, grad_output, weight.shape[-2:], ctx.stride,
                ctx.padding)
        if needs_bias:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


#: Elements of one band of im2col rows in :func:`strided_conv_weight_grad`
#: (4 MiB of float32: the band stays in cache).
WEIGHT_GRAD_BAND_ELEMENTS = 2**20


def strided_conv_weight_grad(input: torch.Tensor, grad_output: torch.Tensor,
                             kernel_size: Tuple[int, int],
                             stride: Tuple[int, int],
                             padding: Tuple[int, int]) -> torch.Tensor:
    """The weight gradient of a dense zero-padded conv (any stride).

    ``grad[o, i, p, q] = sum_{b, y, x} grad_output[b, o, y, x] *
    pad(input)[b, i, s_h y + p, s_w x + q]``. Per image and per band of
    output rows, the band's patches are gathered into an im2col matrix
    (rows: output pixels, columns: ``(p, q, i)``) of at most
    :data:`WEIGHT_GRAD_BAND_ELEMENTS` elements, and
    ``grad_output_band^T @ patches`` is added to the gradient. On
    channels-last maps the input rows and the output gradient band are
    slices, no copy (only bands that reach the zero padding are padded).

    Args:
        input (Tensor): (B, Cin, H, W) conv input.
        grad_output (Tensor): (B, Cout, Ho, Wo) output gradient.
        kernel_size (tuple[int, int]): (kh, kw).
        stride (tuple[int, int]): (sh, sw).
        padding (tuple[int, int]): (ph, pw).

    Returns:
        Tensor: (Cout, Cin, kh, kw), contiguous.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    channels, height = input.shape[1], input.shape[2]
    out_channels, out_height, out_width = grad_output.shape[1:]
    x = input.permute(0, 2, 3, 1).contiguous()  # (B, H, W, Cin)
    g = grad_output.permute(0, 2, 3, 1)  # (B, Ho, Wo, Cout)
    patch = kh * kw * channels
    rows = max(1, WEIGHT_GRAD_BAND_ELEMENTS // (out_width * patch))
    grad = input.new_zeros(out_channels, patch)
    for image, grad_image in zip(x, g):
        for top in range(0, out_height, rows):
            bottom = min(top + rows, out_height)
            first = top * sh - ph  # input rows first:last of the band
            last = (bottom - 1) * sh - ph + kh
            band = image[max(first, 0):min(last, height)]
            if ph or pw or last > height:
                band = F.pad(band, (0, 0, pw, pw, max(-first, 0),
                                    max(last - height, 0)))
            row_stride, col_stride = band.stride(0), band.stride(1)
            patches = band.as_strided(
                (bottom - top, out_width, kh, kw, channels),
                (sh * row_stride, sw * col_stride, row_stride, col_stride,
                 1)).reshape(-1, patch)
            grad.addmm_(grad_image[top:bottom].reshape(-1, out_channels).t(),
                        patches)
    return grad.view(out_channels, kh, kw, channels).permute(
        0, 3, 1, 2).contiguous()


def _strided_conv_args(input: Any, weight: Any, bias: Any = None,
                       stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                       groups: int = 1) -> Optional[Tuple[Any, ...]]:
    """``(input, weight, bias, stride, padding)`` of an ``F.conv2d`` call to
    route through :class:`StridedConv2d` (a float32/64 CPU dense conv with
    a stride above 1, numeric zero padding and no dilation, whose weight
    autograd records, outside CPU autocast); else ``None``."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if not all(type(t) in (torch.Tensor, nn.Parameter) for t in tensors):
        return None
    if (input.dim() != 4 or weight.dim() != 4 or groups != 1
            or input.dtype not in (torch.float32, torch.float64)
            or any(t.dtype != input.dtype or t.device.type != 'cpu'
                   for t in tensors)):
        return None
    if isinstance(padding, str) or _pair(dilation) != (1, 1):
        return None
    stride, padding = _pair(stride), _pair(padding)
    if stride == (1, 1):
        return None
    if (not torch.is_grad_enabled() or torch.is_autocast_enabled('cpu')
            or not weight.requires_grad):
        return None
    return input, weight, bias, stride, padding


# ----------------------------------------------- GELU + Linear gradients
#: Elements of one row chunk in :class:`GeluLinear`'s backward (2 MiB of
#: float32: the chunk buffer stays in cache).
GELU_LINEAR_CHUNK_ELEMENTS = 2**19


class GeluLinear(torch.autograd.Function):
    """``F.linear(gelu(hidden), weight, bias)`` (an MLP's second layer)
    whose backward runs in row chunks.

    ``apply(hidden, activated, weight, bias, approximate)``: ``activated``
    is ``gelu(hidden)`` as forward already computed it (detached); the
    output is ``F.linear(activated, weight, bias)`` (bit-identical). Like
    plain autograd with :func:`recompute_norms_and_gelus` it keeps only
    ``hidden`` and ``weight`` for backward. Backward, per chunk of
    :data:`GELU_LINEAR_CHUNK_ELEMENTS` elements of ``hidden``: recompute the
    chunk's GELU, add its weight gradient ``grad_out^T gelu(h)``, compute
    its ``grad_out @ weight`` (in the same chunk buffer) and the GELU
    backward into the chunk's rows of the hidden gradient. Plain autograd
    instead makes two more full-size hidden maps (the recomputed GELU
    output and the gradient of it), each a fresh allocation and one more
    pass over memory.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, activated: torch.Tensor,
                weight: torch.Tensor, bias: Optional[torch.Tensor],
                approximate: str) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.approximate = approximate
        ctx.has_bias = bias is not None
        return F.linear(activated, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        hidden, weight = ctx.saved_tensors
        needs_hidden, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        rows = hidden.reshape(-1, hidden.shape[-1])
        grads = grad_output.reshape(-1, grad_output.shape[-1])
        grad_hidden = torch.empty_like(rows) if needs_hidden else None
        grad_weight = torch.zeros_like(weight) if needs_weight else None
        step = max(1, GELU_LINEAR_CHUNK_ELEMENTS // rows.shape[1])
        # one chunk buffer: the chunk's GELU output, then its gradient
        buffer = rows.new_empty(min(step, rows.shape[0]), rows.shape[1])
        for top in range(0, rows.shape[0], step):
            chunk, grad_chunk = rows[top:top + step], grads[top:top + step]
            part = buffer[:chunk.shape[0]]
            if needs_weight:
                torch.ops.aten.gelu.out(chunk, approximate=ctx.approximate,
                                        out=part)
                grad_weight.addmm_(grad_chunk.t(), part)
            if needs_hidden:
                torch.mm(grad_chunk, weight, out=part)
                torch.ops.aten.gelu_backward.grad_input(
                    part, chunk, approximate=ctx.approximate,
                    grad_input=grad_hidden[top:top + step])
        buffer = part = None  # freed before the bias gradient
        if needs_hidden:
            grad_hidden = grad_hidden.view_as(hidden)
        grad_bias = grads.sum(0) if ctx.has_bias and needs_bias else None
        return grad_hidden, None, grad_weight, grad_bias, None


#: Attribute of a GELU output made under :func:`cpu_backward_routes`: the
#: GELU's ``(input, approximate)``.
_GELU_INPUT_ATTR = '_mmdet_l2vit_gelu_input'


def _gelu_linear_args(input: Any, weight: Any, bias: Any = None
                      ) -> Optional[Tuple[Any, ...]]:
    """``GeluLinear.apply`` arguments for an ``F.linear`` call on a GELU
    output (a contiguous float32/64 CPU map made by ``F.gelu`` under the
    routing while autograd records, outside CPU autocast); else ``None``.

    The GELU input comes from the output's note, not from the autograd
    node: reading a saved tensor inside a checkpointed block would
    recompute the block."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    if not all(type(t) in (torch.Tensor, nn.Parameter) for t in tensors):
        return None
    noted = getattr(input, _GELU_INPUT_ATTR, None)
    if (noted is None or _op_name(input.grad_fn) != _GELU
            or not input.is_contiguous() or weight.dim() != 2
            or input.dtype not in (torch.float32, torch.float64)
            or any(t.dtype != input.dtype or t.device.type != 'cpu'
                   for t in tensors)):
        return None
    if not torch.is_grad_enabled() or torch.is_autocast_enabled('cpu'):
        return None
    hidden, approximate = noted
    return hidden, input.detach(), weight, bias, approximate


# ------------------------------------------- ReLU linear attention
_threshold_backward = torch.ops.aten.threshold_backward.grad_input


class ReluLinearAttention(torch.autograd.Function):
    """L²ViT's linear attention core
    (:func:`~.l2vit_attention.relu_linear_attention`) as one node that keeps
    only the qkv projection and the ``d x d`` per-head sums for backward.

    ``apply(qkv, temperature, denominator_floor)`` with ``qkv`` of shape
    ``(B, N, 3, heads, d)`` returns ``(B, N, heads, d)``, already in the
    layout the output projection reads (no transposed copy). Per image and
    head, with ``Q' = relu(Q)``, ``K' = relu(K)``, ``S = K'^T V``,
    ``s = sum_n K'_n``, ``z = Q' s``, ``den = max(z, floor)`` and
    ``out = Q' S tau / den``, backward computes from ``g = dL/d out``::

        G = g / den                 A = G (S tau)^T
        dL/dz = -(Q' . A) / den     (0 where z < floor)
        dL/dQ' = A + dL/dz s^T      dL/dS = tau Q'^T G
        dL/ds = Q'^T dL/dz          dL/dtau = sum(Q'^T G * S)
        dL/dK' = V (dL/dS)^T + 1 (dL/ds)^T      dL/dV = K' dL/dS

    and the ReLU masks, written straight into the ``(B, N, 3C)`` gradient
    of the projection. Plain autograd instead keeps ``Q'``, ``K'``, a copy
    of ``V`` and the numerator (about 4 maps of C channels against the 3 of
    qkv) and makes the qkv gradient by stacking three separate gradients
    (a zero-filled buffer and a copy). The products run per head as GEMMs
    on strided views, the elementwise passes over all heads at once.
    Gradients equal plain autograd's to float32 rounding; not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, temperature: torch.Tensor,
                denominator_floor: Optional[float]) -> torch.Tensor:
        B, N, _, heads, d = qkv.shape
        out = qkv.new_empty(B, N, heads, d)
        kv_sums = qkv.new_empty(B, heads, d, d)  # S = K'^T V
        k_sums = qkv.new_empty(B, heads, d)
        relu_rows = qkv.new_empty(N, heads, d)
        q_dot_k_sum = qkv.new_empty(heads, N)
        tau = temperature.detach().view(heads)
        for b in range(B):
            q, k, v = qkv[b].unbind(1)  # (N, heads, d)
            torch.clamp_min(k, 0, out=relu_rows)
            torch.sum(relu_rows, 0, out=k_sums[b])
            for h in range(heads):
                torch.mm(relu_rows[:, h].t(), v[:, h], out=kv_sums[b, h])
            torch.clamp_min(q, 0, out=relu_rows)
            for h in range(heads):
                torch.mv(relu_rows[:, h], k_sums[b, h], out=q_dot_k_sum[h])
                torch.mm(relu_rows[:, h], kv_sums[b, h] * tau[h],
                         out=out[b, :, h])
            out[b].div_(linear_attention_denominator(
                q_dot_k_sum, denominator_floor).t()[..., None])
        ctx.save_for_backward(qkv, temperature, kv_sums, k_sums)
        ctx.denominator_floor = denominator_floor
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        qkv, temperature, kv_sums, k_sums = ctx.saved_tensors
        floor = ctx.denominator_floor
        B, N, _, heads, d = qkv.shape
        tau = temperature.detach().view(heads, 1, 1)
        grad_qkv = torch.empty_like(qkv)
        grad_tau = qkv.new_zeros(heads)
        relu_rows = qkv.new_empty(N, heads, d)
        rows = qkv.new_empty(N, heads, d)  # A, then V (dL/dS)^T
        q_dot_k_sum = qkv.new_empty(heads, N)
        for b in range(B):
            q, k, v = qkv[b].unbind(1)  # (N, heads, d)
            grad_q, grad_k, grad_v = grad_qkv[b].unbind(1)
            kv, k_sum = kv_sums[b] * tau, k_sums[b]
            torch.clamp_min(q, 0, out=relu_rows)
            for h in range(heads):
                torch.mv(relu_rows[:, h], k_sum[h], out=q_dot_k_sum[h])
            den = linear_attention_denominator(q_dot_k_sum, floor).t()
            grad_num = grad_output[b] / den[..., None]
            for h in range(heads):
                torch.mm(grad_num[:, h], kv[h].t(), out=rows[:, h])
            grad_z = torch.linalg.vecdot(relu_rows, rows).div_(den).neg_()
            if floor is not None:  # clamp: no gradient below the floor
                grad_z.masked_fill_(q_dot_k_sum.t() < floor, 0)
            grad_kv = torch.stack([relu_rows[:, h].t() @ grad_num[:, h]
                                   for h in range(heads)])
            grad_k_sum = torch.stack([relu_rows[:, h].t() @ grad_z[:, h]
                                      for h in range(heads)])
            rows.addcmul_(grad_z[..., None], k_sum)
            _threshold_backward(rows, q, 0, grad_input=grad_q)
            grad_tau += (grad_kv * kv_sums[b]).sum((1, 2))
            grad_kv_sum = grad_kv * tau
            torch.clamp_min(k, 0, out=relu_rows)
            for h in range(heads):
                torch.mm(relu_rows[:, h], grad_kv_sum[h], out=grad_v[:, h])
                torch.mm(v[:, h], grad_kv_sum[h].t(), out=rows[:, h])
            rows.add_(grad_k_sum)
            _threshold_backward(rows, k, 0, grad_input=grad_k)
        grad_tau = grad_tau.view_as(temperature)
        return (grad_qkv if ctx.needs_input_grad[0] else None,
                grad_tau if ctx.needs_input_grad[1] else None, None)


def _linear_attention_args(qkv: Any, temperature: Any,
                           denominator_floor: Any) -> Optional[Tuple[Any,
                                                                     ...]]:
    """``ReluLinearAttention.apply`` arguments for a
    :func:`~.l2vit_attention.relu_linear_attention` call on a float32/64
    CPU qkv view with unit last stride while autograd records, outside CPU
    autocast; else ``None``."""
    tensors = (qkv, temperature)
    if not all(type(t) in (torch.Tensor, nn.Parameter) for t in tensors):
        return None
    if (qkv.dim() != 5 or qkv.shape[2] != 3 or qkv.stride(-1) != 1
            or temperature.shape != (qkv.shape[3], 1, 1)
            or qkv.dtype not in (torch.float32, torch.float64)
            or any(t.dtype != qkv.dtype or t.device.type != 'cpu'
                   for t in tensors)):
        return None
    if (not torch.is_grad_enabled() or torch.is_autocast_enabled('cpu')
            or not any(t.requires_grad for t in tensors)):
        return None
    return qkv, temperature, denominator_floor


# ------------------------------------------------------------ the routing
class _CpuBackwardRoutes(TorchFunctionMode):
    """Routes the ``F.conv2d`` calls :func:`_same_depthwise_conv_args`
    accepts through :class:`SameDepthwiseConv2d`, those
    :func:`_strided_conv_args` accepts through :class:`StridedConv2d`, the
    ``F.linear`` calls :func:`_gelu_linear_args` accepts through
    :class:`GeluLinear` and the
    :func:`~.l2vit_attention.relu_linear_attention` calls
    :func:`_linear_attention_args` accepts through
    :class:`ReluLinearAttention`; every other call runs as it is."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d:
            routed = _same_depthwise_conv_args(*args, **kwargs)
            if routed is not None:
                return SameDepthwiseConv2d.apply(*routed)
            routed = _strided_conv_args(*args, **kwargs)
            if routed is not None:
                return StridedConv2d.apply(*routed)
        elif func is F.linear:
            routed = _gelu_linear_args(*args, **kwargs)
            if routed is not None:
                return GeluLinear.apply(*routed)
        elif func is relu_linear_attention:
            routed = _linear_attention_args(*args, **kwargs)
            if routed is not None:
                return ReluLinearAttention.apply(*routed)
        elif func is F.gelu:
            out = func(*args, **kwargs)
            hidden = args[0] if args else kwargs.get('input')
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                setattr(out, _GELU_INPUT_ATTR,
                        (hidden, kwargs.get('approximate', 'none')))
            return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_backward_routes(enabled: bool = True) -> Iterator[None]:
    """Inside, two kinds of calls get a faster backward:

    - stride-1 'same' depthwise ``F.conv2d`` calls with kernels of at least
      5x5 (L²ViT's 7x7 LCM convs; not the 3x3 CPEs or InLine's 3x3 local
      residual) run as :class:`SameDepthwiseConv2d`;
    - dense ``F.conv2d`` calls with a stride above 1 (L²ViT's stem and
      downsampling convs, the InLine patch embeddings) run as
      :class:`StridedConv2d`;
    - ``F.linear`` calls on a GELU output (every MLP's ``fc2``) run as
      :class:`GeluLinear`;
    - L²ViT's linear attention core (the plain function
      :func:`~.l2vit_attention.relu_linear_attention`, which hands itself
      to the active mode through ``handle_torch_function``) runs as
      :class:`ReluLinearAttention`.

    The same outputs (the linear attention's to float32 rounding: GEMMs
    per head instead of batched ones), gradients equal to float32 rounding,
    no more saved tensors (the linear attention keeps fewer). The model code
    stays ``nn.Conv2d`` / ``nn.Linear`` / plain functions: a
    :class:`~torch.overrides.TorchFunctionMode` sees every torch call
    (about 2 us of Python per call while active, some 1600 calls in an
    L²ViT-T forward: ~3 ms). The backbone turns this on in one place, its
    ``forward``, where :func:`routes_backward_here` says so; a checkpointed
    block recomputes under the same routing (:func:`backward_routes_now`).

    Args:
        enabled (bool): Whether to route the calls (off: a no-op).
    """
    if not enabled:
        yield
        return
    token = _ROUTES_ACTIVE.set(True)
    try:
        with _CpuBackwardRoutes():
            yield
    finally:
        _ROUTES_ACTIVE.reset(token)


#: Whether :func:`cpu_backward_routes` is active (read by checkpointing).
_ROUTES_ACTIVE = contextvars.ContextVar('cpu_backward_routes', default=False)


def backward_routes_now() -> bool:
    """Whether :func:`cpu_backward_routes` is active here."""
    return _ROUTES_ACTIVE.get()


def routes_backward_here(x: torch.Tensor) -> bool:
    """Whether :func:`cpu_backward_routes` applies: a CPU input while
    autograd records, outside tracing and ``torch.compile``.

    Why: on the CPU, oneDNN's backward of a 5x5 or 7x7 depthwise conv on
    channels-last maps takes 14-25x its forward, mostly for the weight
    gradient. Forward depthwise convs compute the same gradients 2-4x
    faster. Measured for L²ViT-T at 1024x1024 with 2 threads: stage 1's
    7x7 LCM conv backward drops from 92 to 27 ms, and the LCM backward of
    a training step from about 0.5 to 0.17 s, out of a 4-5 s step. An MLP
    tail ``fc2(gelu(h))`` at stage 1 (65536 x 384 hidden) runs fc1 + fc2
    forward and backward in 265 instead of 340 ms with the chunked
    backward of :class:`GeluLinear` (its two full-size temporaries are
    fresh allocations, which the CPU pays for in page faults). oneDNN's
    weight gradient of a strided dense conv takes 4-8x its forward; the
    banded im2col GEMMs of :class:`StridedConv2d` take 52 instead of
    287 ms for L²ViT-T's second stem conv at 1024x1024 and 22 instead of
    99 ms for its first downsampling conv (2 threads). L²ViT-T's stage-1
    LGA attention (65536 tokens x 96, with its two Linears) runs forward
    and backward in 188 instead of 273 ms as :class:`ReluLinearAttention`
    (medians of 8), keeping one full-size map less.
    Elsewhere the native backward is kept: CUDA has depthwise backward
    kernels of its own and a caching allocator, and tracing and
    ``torch.compile`` record their own graphs.
    """
    return x.device.type == 'cpu' and saves_memory_here()
