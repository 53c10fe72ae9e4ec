"""InLine attention: injective linear attention plus a dynamic local residual.

For each head, with kernel map ``phi`` (identity in every released model),
``q = phi(Q)``, ``k = phi(K)``, ``s = d**-0.5`` and the ``N`` tokens of the
map (no eps, no mask), the attention weights are::

    w_ij = (s * q_i . k_j - s * q_i . mean(k) + 1) / N

(each row sums to one; weights can be negative), evaluated in linear time
as ``out_i = q_i M + mean(V)`` with ``M = s (K^T V / N - mean(k)^T mean(V))``
per head (d x d). A dynamic per-channel 3x3 depthwise conv of ``V`` (kernels
predicted per image from the token mean of the input) is added before the
output projection: ``proj(out + local(V))``.

Layout and speed (see ``docs/inline_dense_design.md``): everything stays in
the channels-last ``(B, H, W, C)`` layout. Heads are strided views of it
(``(h, N, d)`` with row stride C), which the batched GEMMs read and write
directly, so there is no head split/merge copy; ``mean(V)`` is the bias of
the local conv, whose output ``q M`` is then accumulated into in place, and
the output projection can take the block's residual in its epilogue.

For CPU float32 inference (no grad, no autocast, no tracing or compiling)
a whole InLine block runs in bands of image rows
(:func:`inline_block_inference`): LayerNorm, the projections, the
reductions, the local conv, the MLP and the residuals work on bands that
stay in cache; only q and V are materialised for the whole map, in scratch
buffers shared by the blocks of one forward (:class:`Workspace`), and the
backbones let the block write its output over its input. Results equal the
plain path up to float32 rounding. In training the attention takes its
LayerNorm and recomputes it in backward (:class:`_NormProjectMean`).

The reductions over all tokens and ``q M`` run in float32 even under
fp16/bf16 autocast. Parameter names follow the official code: PVT blocks
have ``q`` and ``kv``, Swin blocks ``qkv``; both have ``proj`` and
``residual.{0,2}``.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .chunked import Workspace, chunk_rows, heads_view
from .fused import linear

#: Kernel maps phi of the official ``inline_swin.py`` (applied to q and k).
KERNEL_FUNCS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'identity': lambda x: x,
    'relu': F.relu,
    'leakyrelu': lambda x: F.leaky_relu(x, 0.01),
    'exp': lambda x: torch.exp(0.2 * x),
}

#: From this many heads on, the banded inference keeps q head-major (see
#: :func:`inline_block_inference`).
HEAD_MAJOR_MIN_HEADS = 6
def _reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def injective_global_term(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """The InLine global term in linear time, in float32 (reference form).

    ``out_i = q_i M + mean(V)`` with ``M = s * (K^T V / N - mean(K)^T
    mean(V))`` (per head, d x d), algebraically the official two-term
    evaluation. The attention module itself computes the same terms without
    head copies (:func:`global_term_matrix`); this function is kept as a
    compact statement of the math.

    Args:
        q (Tensor): ``(B, N, h, d)`` queries (already kernel-mapped).
        k (Tensor): ``(B, N, h, d)`` keys (already kernel-mapped).
        v (Tensor): ``(B, N, h, d)`` values.
        scale (float): ``s = d**-0.5``.

    Returns:
        Tensor: ``(B, N, h, d)``, float32 (float64 for float64 inputs).
    """
    dtype = _reduction_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        k_mean, v_mean = k.mean(dim=1), v.mean(dim=1)  # (B, h, d)
        kv = torch.einsum('bnhd,bnhe->bhde', k, v) / k.shape[1]
        kv = (kv - k_mean.unsqueeze(-1) * v_mean.unsqueeze(-2)) * scale
        return torch.einsum('bnhd,bhde->bnhe', q, kv) + v_mean.unsqueeze(1)


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


def projected_means(attn: 'InLineAttention', x_mean: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """mean(K), mean(V) from the token mean of the input (exact for the
    identity kernel map: the projections are affine), (B, C) each."""
    C = x_mean.shape[-1]
    if attn.qkv_layout == 'q_kv':
        weight, bias = attn.kv.weight, attn.kv.bias
    else:
        weight = attn.qkv.weight[C:]
        bias = None if attn.qkv.bias is None else attn.qkv.bias[C:]
    k_mean, v_mean = F.linear(x_mean, weight.to(x_mean.dtype),
                              None if bias is None else bias.to(
                                  x_mean.dtype)).split(C, dim=-1)
    return k_mean, v_mean


def build_kernel_predictor(embed_dims: int, num_heads: int) -> nn.Sequential:
    """The official ``residual`` predictor: two head-grouped 1x1 Conv1d
    (``d -> d -> 9d`` per head) with GELU between.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads (groups).
    """
    return nn.Sequential(
        nn.Conv1d(embed_dims, embed_dims, 1, groups=num_heads), nn.GELU(),
        nn.Conv1d(embed_dims, 9 * embed_dims, 1, groups=num_heads))


def _grouped_pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
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
                      mean: torch.Tensor) -> torch.Tensor:
    """Local-residual kernels from the token mean, (B, C) -> (B, C, 1, 3, 3).

    Channel ``c``'s kernel is predictor outputs ``[9c, 9c + 9)``, row-major
    (the official grouped Conv1d, evaluated as two batched GEMMs).
    """
    B, C = mean.shape
    with torch.autocast(device_type=mean.device.type, enabled=False):
        mean = mean.to(predictor[0].weight.dtype)
        hidden = predictor[1](_grouped_pointwise(predictor[0], mean))
        return _grouped_pointwise(predictor[2], hidden).view(B, C, 1, 3, 3)


def predict_local_kernels(predictor: nn.Sequential,
                          x: torch.Tensor) -> torch.Tensor:
    """Kernels of the local residual from the token mean of the input.

    Args:
        predictor (nn.Sequential): See :func:`build_kernel_predictor`.
        x (Tensor): (B, H, W, C) attention input.

    Returns:
        Tensor: (B, C, 1, 3, 3) kernels in the predictor's dtype (float32).
    """
    dtype = _reduction_dtype(predictor[0].weight.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return kernels_from_mean(predictor, x.to(dtype).mean(dim=(1, 2)))


def dynamic_depthwise_conv3x3(v: torch.Tensor,
                              kernels: torch.Tensor,
                              bias: Optional[torch.Tensor] = None
                              ) -> torch.Tensor:
    """Per-image depthwise 3x3 cross-correlation with zero padding 1.

    One depthwise conv per image on the NCHW view of the channels-last map
    (the official single ``groups=B*C`` conv needs a transposed copy);
    identical results.

    Args:
        v (Tensor): (B, H, W, C) values (best contiguous: the conv then
            reads it without a copy).
        kernels (Tensor): (B, C, 1, 3, 3).
        bias (Tensor, optional): (B, C) per-image bias.

    Returns:
        Tensor: (B, H, W, C), contiguous.
    """
    B, C = v.shape[0], v.shape[-1]
    kernels = kernels.to(v.dtype)
    local = [
        F.conv2d(v[i:i + 1].permute(0, 3, 1, 2), kernels[i],
                 None if bias is None else bias[i].to(v.dtype), padding=1,
                 groups=C).permute(0, 2, 3, 1) for i in range(B)
    ]
    return local[0] if B == 1 else torch.cat(local)


def project_qkv(attn: 'InLineAttention', x: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v projections of (..., C) tokens as (..., C) views (one or two
    GEMMs; k and v, and q for the Swin layout, are column slices), with the
    kernel map applied to q and k."""
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


class _NormProjectMean(torch.autograd.Function):
    """``(layer_norm(x) W^T + b, token mean of layer_norm(x))`` for (B, N, C)
    inputs, saving ``x`` and the LayerNorm statistics but not the normalised
    tensor, which backward recomputes (one cheap pass): the attention's
    training activations lose one (N, C) tensor per block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, norm_weight: torch.Tensor,
                norm_bias: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = (x.shape[-1], )
        normed, mean, rstd = torch.native_layer_norm(x, shape, norm_weight,
                                                     norm_bias, eps)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return F.linear(normed, weight, bias), normed.mean(1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_mean: torch.Tensor):
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        B, N, C = x.shape
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[4]:
            normed = torch.native_layer_norm(x, (C, ), norm_weight,
                                             norm_bias, ctx.eps)[0]
            grad_weight = grad_out.reshape(-1, grad_out.shape[-1]).t() @ \
                normed.reshape(-1, C)
        if ctx.has_bias and ctx.needs_input_grad[5]:
            grad_bias = grad_out.sum((0, 1))
        grad_normed = grad_out @ weight
        if grad_mean is not None:
            grad_normed.add_((grad_mean / N).unsqueeze(1))
        grad_x, grad_norm_weight, grad_norm_bias = \
            torch.ops.aten.native_layer_norm_backward(
                grad_normed, x, (C, ), mean, rstd, norm_weight, norm_bias,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 ctx.needs_input_grad[2]])
        return (grad_x, grad_norm_weight, grad_norm_bias, None, grad_weight,
                grad_bias)


def _recomputable_norm(x: torch.Tensor, norm: nn.Module) -> bool:
    """Whether :class:`_NormProjectMean` may serve ``norm`` on ``x``."""
    return (torch.is_grad_enabled() and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.jit.is_tracing()
            and isinstance(norm, nn.LayerNorm) and norm.elementwise_affine
            and norm.bias is not None
            and tuple(norm.normalized_shape) == (x.shape[-1], ))


class InLineAttention(nn.Module):
    """InLine attention over the whole (B, H, W, C) map.

    Args:
        embed_dims (int): Channels C.
        num_heads (int): Heads; any head dim ``C // num_heads``.
        qkv_layout (str): ``'q_kv'`` (PVT: ``q`` and ``kv`` Linears, K rows
            first in ``kv``) or ``'qkv'`` (Swin: one ``qkv`` Linear).
            Default: 'qkv'.
        qkv_bias (bool): Bias on the q/k/v projections. Default: True.
        kernel_func (str): Kernel map of q and k: ``'identity'`` (official
            default), ``'relu'``, ``'leakyrelu'`` or ``'exp'``
            (``exp(0.2 x)``). Default: 'identity'.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 qkv_layout: str = 'qkv',
                 qkv_bias: bool = True,
                 kernel_func: str = 'identity') -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by '
                             f'num_heads {num_heads}.')
        if kernel_func not in KERNEL_FUNCS:
            raise ValueError(f'unknown kernel_func {kernel_func!r}; choose '
                             f'one of {sorted(KERNEL_FUNCS)}.')
        if qkv_layout not in ('q_kv', 'qkv'):
            raise ValueError(f"qkv_layout must be 'q_kv' or 'qkv', got "
                             f'{qkv_layout!r}.')
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.scale = self.head_dims**-0.5
        self.qkv_layout = qkv_layout
        self.kernel_func = kernel_func
        if qkv_layout == 'q_kv':
            self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.residual = build_kernel_predictor(embed_dims, num_heads)

    def _qkv_weights(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The (3C, C) q/k/v projection (q, k, v row blocks) and its bias."""
        if self.qkv_layout == 'qkv':
            return self.qkv.weight, self.qkv.bias
        bias = None if self.q.bias is None else torch.cat(
            [self.q.bias, self.kv.bias])
        return torch.cat([self.q.weight, self.kv.weight]), bias

    def forward(self,
                x: torch.Tensor,
                residual: Optional[torch.Tensor] = None,
                norm: Optional[nn.Module] = None) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C), already normalised unless ``norm``.
            residual (Tensor, optional): (B, H, W, C) added to the output
                (the block's skip connection, fused into the projection).
            norm (nn.LayerNorm, optional): Pre-norm applied to ``x`` first
                (in training it is recomputed in backward, not stored).

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        N, heads = H * W, self.num_heads
        x_mean = None
        if norm is not None and _recomputable_norm(x, norm):
            weight, bias = self._qkv_weights()
            qkv, x_mean = _NormProjectMean.apply(
                x.reshape(B, N, C), norm.weight, norm.bias, norm.eps,
                weight, bias)
            q, k, v = qkv.view(B, H, W, 3 * C).split(C, dim=-1)
            if self.kernel_func != 'identity':
                phi = KERNEL_FUNCS[self.kernel_func]
                q, k = phi(q), phi(k)
        else:
            if norm is not None:
                x = norm(x)
            q, k, v = project_qkv(self, x)
        dtype = _reduction_dtype(q.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x_mean is None:
                x_mean = x.to(dtype).mean(dim=(1, 2))
            kernels = kernels_from_mean(self.residual, x_mean)
            k32, v32 = k.to(dtype), v.to(dtype)
            kv_sum = torch.stack([
                torch.bmm(
                    heads_view(k32[i].reshape(N, C), heads).transpose(1, 2),
                    heads_view(v32[i].reshape(N, C), heads)) for i in range(B)
            ])
            if self.kernel_func == 'identity' and dtype == v.dtype:
                k_mean, v_mean = projected_means(self, x_mean)
            else:  # kernel-mapped or low-precision keys: their own means
                k_mean, v_mean = k32.mean(dim=(1, 2)), v32.mean(dim=(1, 2))
            matrix = global_term_matrix(kv_sum, k_mean, v_mean, N,
                                        self.scale)
            if dtype == v.dtype:  # mean(V) enters as the conv's bias
                out = dynamic_depthwise_conv3x3(v, kernels, v_mean)
            else:  # low-precision conv, float32 accumulation
                out = dynamic_depthwise_conv3x3(v, kernels).to(dtype) + \
                    v_mean.view(B, 1, 1, C)
            q32 = q.to(dtype)
            if torch.compiler.is_compiling() or torch.jit.is_tracing():
                # out of place: a compiler picks its own layouts (in-place
                # updates of strided views do not survive that), and op
                # counters (tracing) know bmm
                glob = torch.stack([
                    torch.bmm(heads_view(q32[i].reshape(N, C), heads),
                              matrix[i]) for i in range(B)
                ])  # (B, h, N, d)
                out = (out.reshape(B, N, heads, -1) +
                       glob.transpose(1, 2)).reshape(B, H, W, C)
            else:
                for i in range(B):  # out += q M, in place on head views
                    heads_view(out[i].view(N, C), heads).baddbmm_(
                        heads_view(q32[i].reshape(N, C), heads), matrix[i])
        return linear(out.to(q.dtype), self.proj, residual=residual)


def inline_block_inference(x: torch.Tensor,
                           norm1: nn.Module,
                           attn: InLineAttention,
                           norm2: nn.Module,
                           mlp: nn.Module,
                           out: Optional[torch.Tensor] = None,
                           workspace: Optional[Workspace] = None
                           ) -> torch.Tensor:
    """``x + attn(norm1(x))`` then ``+ mlp(norm2(.))`` for inference (no
    autograd; drop path must be a no-op), in bands of image rows.

    Pass 1 over the bands: ``norm1``, the projections, the token sum of the
    normed input (mean(K) and mean(V) follow from it through the affine
    projections for the identity kernel map), the per-head ``K^T V``
    (float32); q and V are written to workspace buffers. Then the global
    matrix M and the kernels. Pass 2 over the bands: the local conv of the
    band (plus one halo row each side; ``mean(V)`` is its bias), ``+= q M``
    in place, the projection with the residual, ``norm2`` and the MLP with
    its residual, written to ``out``. Everything but q and V lives in
    cache-sized bands.

    Args:
        x (Tensor): (B, H, W, C) block input.
        norm1, norm2 (nn.Module): The block's LayerNorms.
        attn (InLineAttention): The attention.
        mlp (nn.Module): The MLP, called as ``mlp(x, residual=...)``.
        out (Tensor, optional): Where to write the result; may be ``x``
            itself (each band is read before it is overwritten). Default: a
            new tensor.
        workspace (Workspace, optional): Scratch buffers to reuse.

    Returns:
        Tensor: (B, H, W, C) block output (``out``).
    """
    x = x.contiguous()
    B, H, W, C = x.shape
    N, heads = H * W, attn.num_heads
    hidden = mlp.fc1.out_features if hasattr(mlp, 'fc1') else 4 * C
    rows = chunk_rows(H, W, max(hidden, 3 * C), x.element_size())
    workspace = Workspace() if workspace is None else workspace
    # Many heads: q is kept head-major and the per-head products run as one
    # batched GEMM each (a few large ops rather than 2 h small ones: fewer
    # thread synchronisations); few heads: strided head views, no copies.
    head_major = heads >= HEAD_MAJOR_MIN_HEADS
    queries = workspace.get('inline_q', (B, heads, N, C // heads) if
                            head_major else (B, N, C), x)
    values = workspace.get('inline_v', (B, H, W, C), x)
    if out is None or not out.is_contiguous() or out.shape != x.shape:
        out = torch.empty_like(x)
    tokens, v_tokens, o_tokens = (t.view(B, N, C) for t in (x, values, out))
    bands = [(r, min(r + rows, H)) for r in range(0, H, rows)]

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
            y = linear(chunk, attn.proj, residual=tokens[i, span])
            o_tokens[i, span] = mlp(norm2(y), residual=y)
    return out
