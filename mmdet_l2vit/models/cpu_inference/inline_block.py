"""An InLine block (InLine attention + MLP) for CPU inference, in row bands.

The block computes ``y = x + proj(q M + mean(V) + local(V))`` and
``y + mlp(norm2(y))`` (see :mod:`..layers.inline_attention` for the maths)
in two passes over bands of image rows:

1. ``norm1``, the projections, the token sum of the normed input (mean(K)
   and mean(V) follow from it through the affine projections for the
   identity kernel map), the per-head ``K^T V``; q and V are written to
   workspace buffers (:data:`QUERIES`, :data:`VALUES`).
2. After the global matrix M and the local kernels: the local conv of the
   band (plus one halo row each side; ``mean(V)`` is its bias), ``+= q M``
   in place, the projection with the residual, ``norm2`` and the MLP with
   its residual, written to the output (which may be the input).

Everything but q and V lives in cache-sized bands. Results equal the
reference block up to float32 rounding.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.inline_attention import KERNEL_FUNCS
from . import chunks
from .chunks import Workspace, heads_view
from .onednn import linear, linear_add, mlp_add

#: From this many heads on, q is kept head-major and the per-head products
#: run as one batched GEMM each (a few large ops rather than 2 h small ones:
#: fewer thread synchronisations); with fewer heads, strided head views of
#: the token rows serve without copies.
HEAD_MAJOR_MIN_HEADS = 6
#: Workspace key of the queries (kernel-mapped) of the whole map.
QUERIES = 'inline:queries'
#: Workspace key of the values of the whole map.
VALUES = 'inline:values'


def project_qkv(attn: nn.Module, x: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of (N, C) tokens as (N, C) column views of one or two GEMM
    outputs (``q``/``kv`` or ``qkv`` layout), the kernel map applied to q
    and k."""
    C = x.shape[-1]
    if attn.qkv_layout == 'q_kv':
        q = linear(x, attn.q)
        k, v = linear(x, attn.kv).split(C, dim=-1)
    else:
        q, k, v = linear(x, attn.qkv).split(C, dim=-1)
    if attn.kernel_func != 'identity':
        phi = KERNEL_FUNCS[attn.kernel_func]
        q, k = phi(q), phi(k)
    return q, k, v


def projected_means(attn: nn.Module, x_mean: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """mean(K), mean(V) from the token mean of the (normed) input, (B, C)
    each: exact for the identity kernel map, the projections being
    affine."""
    C = x_mean.shape[-1]
    if attn.qkv_layout == 'q_kv':
        weight, bias = attn.kv.weight, attn.kv.bias
    else:
        weight = attn.qkv.weight[C:]
        bias = None if attn.qkv.bias is None else attn.qkv.bias[C:]
    k_mean, v_mean = F.linear(x_mean, weight, bias).split(C, dim=-1)
    return k_mean, v_mean


def global_term_matrix(kv_sum: torch.Tensor, k_mean: torch.Tensor,
                       v_mean: torch.Tensor, num_tokens: int,
                       scale: float) -> torch.Tensor:
    """``M = s * (K^T V / N - mean(K)^T mean(V))`` per head.

    Args:
        kv_sum (Tensor): (B, h, d, d) ``K^T V`` per head.
        k_mean, v_mean (Tensor): (B, C) token means of K and V.
        num_tokens (int): N.
        scale (float): s.

    Returns:
        Tensor: (B, h, d, d).
    """
    B, h = kv_sum.shape[:2]
    k_mean, v_mean = k_mean.view(B, h, -1), v_mean.view(B, h, -1)
    return (kv_sum / num_tokens -
            k_mean.unsqueeze(-1) * v_mean.unsqueeze(-2)) * scale


def grouped_pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A grouped 1x1 Conv1d on (B, C_in) vectors as one batched GEMM over
    the groups (a 1x1 grouped conv is block-diagonal), -> (B, C_out)."""
    groups, B = conv.groups, x.shape[0]
    weight = conv.weight.view(groups, -1, conv.weight.shape[1])  # (g, o, i)
    x = x.view(B, groups, -1).transpose(0, 1)  # (g, B, i)
    if conv.bias is None:
        out = torch.bmm(x, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(conv.bias.view(groups, 1, -1), x,
                            weight.transpose(1, 2))
    return out.transpose(0, 1).reshape(B, -1)


def kernels_from_mean(predictor: nn.Sequential,
                      x_mean: torch.Tensor) -> torch.Tensor:
    """Local-residual kernels from the token mean, (B, C) -> (B, C, 1, 3, 3).

    Channel ``c``'s kernel is predictor outputs ``[9c, 9c + 9)``, row-major
    (the official grouped Conv1d pair with its GELU, as two batched GEMMs).
    """
    B, C = x_mean.shape
    hidden = predictor[1](grouped_pointwise(predictor[0], x_mean))
    return grouped_pointwise(predictor[2], hidden).view(B, C, 1, 3, 3)


def inline_block(block: nn.Module, x: torch.Tensor,
                 workspace: Workspace,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y = x + attn(norm1(x))``, then ``y + mlp(norm2(y))``, in bands.

    Args:
        block (nn.Module): An InLine block (``norm1``, ``attn``: an
            InLineAttention, ``norm2``, ``mlp``; drop path a no-op).
        x (Tensor): (B, H, W, C) block input.
        workspace (Workspace): Holds q and V of the whole map.
        out (Tensor, optional): Where to write the result; may be ``x``
            itself (each band is read before it is overwritten). Default: a
            new tensor.

    Returns:
        Tensor: (B, H, W, C) block output (``out``).
    """
    norm1, attn, norm2, mlp = block.norm1, block.attn, block.norm2, block.mlp
    x = x.contiguous()
    B, H, W, C = x.shape
    N, heads = H * W, attn.num_heads
    rows = chunks.chunk_rows(H, W, max(mlp.fc1.out_features, 3 * C),
                             x.element_size())
    head_major = heads >= HEAD_MAJOR_MIN_HEADS
    queries = workspace.get(QUERIES, (B, heads, N, C // heads) if
                            head_major else (B, N, C), x)
    values = workspace.get(VALUES, (B, H, W, C), x)
    if out is None or not out.is_contiguous() or out.shape != x.shape:
        out = torch.empty_like(x)
    tokens, v_tokens, o_tokens = (t.view(B, N, C) for t in (x, values, out))
    bands = chunks.row_bands(H, rows)

    identity = attn.kernel_func == 'identity'
    x_sum = x.new_zeros(B, C)
    k_sum = None if identity else x.new_zeros(B, C)
    v_sum = None if identity else x.new_zeros(B, C)
    kv_sum = x.new_zeros(B, heads, C // heads, C // heads)
    for i in range(B):
        for top, bottom in bands:
            span = slice(top * W, bottom * W)
            normed = norm1(tokens[i, span])
            x_sum[i] += normed.sum(0)
            q, k, v = project_qkv(attn, normed)
            if not identity:
                k_sum[i] += k.sum(0)
                v_sum[i] += v.sum(0)
            k, q_heads = heads_view(k, heads), heads_view(q, heads)
            if head_major:
                k = k.contiguous()
                queries[i, :, span] = q_heads
                kv_sum[i].baddbmm_(k.transpose(1, 2),
                                   heads_view(v, heads).contiguous())
            else:
                queries[i, span] = q
                kv_sum[i].baddbmm_(k.transpose(1, 2), heads_view(v, heads))
            v_tokens[i, span] = v
    x_mean = x_sum / N
    if identity:
        k_mean, v_mean = projected_means(attn, x_mean)
    else:
        k_mean, v_mean = k_sum / N, v_sum / N
    matrix = global_term_matrix(kv_sum, k_mean, v_mean, N, attn.scale)
    kernels = kernels_from_mean(attn.residual, x_mean)

    for i in range(B):
        for top, bottom in bands:
            span = slice(top * W, bottom * W)
            first, last = max(top - 1, 0), min(bottom + 1, H)
            local = F.conv2d(
                values[i:i + 1, first:last].permute(0, 3, 1, 2), kernels[i],
                v_mean[i], padding=1, groups=C)  # channels-last output
            local = local.permute(0, 2, 3, 1)[0, top - first:bottom - first]
            chunk = local.reshape(-1, C)  # a view: whole rows
            if head_major:  # (h, n, d) contiguous items: one batched GEMM
                glob = torch.bmm(queries[i, :, span], matrix[i])
                chunk.view(-1, heads, C // heads).add_(glob.transpose(0, 1))
            else:
                heads_view(chunk, heads).baddbmm_(
                    heads_view(queries[i, span], heads), matrix[i])
            y = linear_add(chunk, attn.proj, tokens[i, span])
            o_tokens[i, span] = mlp_add(norm2(y), mlp, y)
    return out
