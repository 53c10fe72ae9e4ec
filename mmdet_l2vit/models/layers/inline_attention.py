"""InLine attention: injective linear attention plus a dynamic local residual.

For each head, with kernel map ``phi`` (identity in every released model),
``q = phi(Q)``, ``k = phi(K)``, ``s = d**-0.5`` and the ``N`` tokens of the
map (no eps, no mask), the attention weights are::

    w_ij = (s * q_i . k_j - s * q_i . mean(k) + 1) / N

(each row sums to one; weights can be negative), evaluated in linear time
as ``out_i = (s / N) q_i (k^T V) + (1 - s q_i . mean(k)) mean(V)``. A
dynamic per-channel 3x3 depthwise conv of ``V`` (kernels predicted per image
from the token mean of the input) is added before the output projection:
``proj(out + local(V))``.

The reductions over all tokens run in float32 even under fp16/bf16 autocast.
Parameter names follow the official code: PVT blocks have ``q`` and ``kv``,
Swin blocks ``qkv``; both have ``proj`` and ``residual.{0,2}``.
"""
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: Kernel maps phi of the official ``inline_swin.py`` (applied to q and k).
KERNEL_FUNCS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'identity': lambda x: x,
    'relu': F.relu,
    'leakyrelu': lambda x: F.leaky_relu(x, 0.01),
    'exp': lambda x: torch.exp(0.2 * x),
}


def injective_global_term(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """The InLine global term in linear time, in float32.

    Uses the algebraically identical form ``out_i = q_i M + mean(V)`` with
    ``M = s * (K^T V / N - mean(K)^T mean(V))`` (per head, d x d), which
    needs one pass over the queries instead of two and rounds no worse
    than the official two-term evaluation.

    Args:
        q (Tensor): ``(B, N, h, d)`` queries (already kernel-mapped).
        k (Tensor): ``(B, N, h, d)`` keys (already kernel-mapped).
        v (Tensor): ``(B, N, h, d)`` values.
        scale (float): ``s = d**-0.5``.

    Returns:
        Tensor: ``(B, N, h, d)``, float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        k_mean, v_mean = k.mean(dim=1), v.mean(dim=1)  # (B, h, d)
        kv = torch.einsum('bnhd,bnhe->bhde', k, v) / k.shape[1]
        kv = (kv - k_mean.unsqueeze(-1) * v_mean.unsqueeze(-2)) * scale
        return torch.einsum('bnhd,bhde->bnhe', q, kv) + v_mean.unsqueeze(1)


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


def predict_local_kernels(predictor: nn.Sequential,
                          x: torch.Tensor) -> torch.Tensor:
    """Kernels of the local residual from the token mean of the input.

    Channel ``c``'s kernel is predictor outputs ``[9c, 9c + 9)``, row-major.

    Args:
        predictor (nn.Sequential): See :func:`build_kernel_predictor`.
        x (Tensor): (B, H, W, C) attention input.

    Returns:
        Tensor: (B, C, 1, 3, 3) kernels in the predictor's dtype (float32).
    """
    B, C = x.shape[0], x.shape[-1]
    dtype = predictor[0].weight.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        mean = x.to(dtype).mean(dim=(1, 2)).unsqueeze(-1)  # (B, C, 1)
        return predictor(mean).view(B, C, 1, 3, 3)


def dynamic_depthwise_conv3x3(v: torch.Tensor,
                              kernels: torch.Tensor) -> torch.Tensor:
    """Per-image depthwise 3x3 cross-correlation with zero padding 1.

    One depthwise conv per image on the NCHW view of the channels-last map
    (faster than the official single ``groups=B*C`` conv, which needs a
    transposed copy); identical results.

    Args:
        v (Tensor): (B, H, W, C) values.
        kernels (Tensor): (B, C, 1, 3, 3).

    Returns:
        Tensor: (B, H, W, C).
    """
    kernels = kernels.to(v.dtype)
    C = v.shape[-1]
    local = [
        F.conv2d(v[i:i + 1].permute(0, 3, 1, 2), kernels[i], padding=1,
                 groups=C) for i in range(v.shape[0])
    ]
    return torch.cat(local).permute(0, 2, 3, 1)


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

    def _project(
            self, x: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        C = x.shape[-1]
        if self.qkv_layout == 'q_kv':
            kv = self.kv(x)
            return self.q(x), kv[..., :C], kv[..., C:]
        qkv = self.qkv(x)
        return qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (B, H, W, C), already normalised.

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        q, k, v = self._project(x)
        phi = KERNEL_FUNCS[self.kernel_func]
        heads = (B, H * W, self.num_heads, self.head_dims)
        out = injective_global_term(
            phi(q).reshape(heads), phi(k).reshape(heads),
            v.reshape(heads), self.scale).reshape(B, H, W, C)
        kernels = predict_local_kernels(self.residual, x)
        out = out + dynamic_depthwise_conv3x3(v, kernels)
        return self.proj(out.to(v.dtype))
