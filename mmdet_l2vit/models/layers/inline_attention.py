"""InLine attention: injective linear attention plus a dynamic local residual.

For each head, with kernel map ``phi`` (identity in every released model),
``q = phi(Q)``, ``k = phi(K)``, ``s = d**-0.5`` and the ``N`` tokens of the
map (no eps, no mask), the attention weights are::

    w_ij = (s * q_i . k_j - s * q_i . mean(k) + 1) / N

Each row sums to one and weights can be negative. With the centred keys
``k_j - mean(k)`` the weights are ``(1 + s q_i . (k_j - mean(k))) / N``, so
in linear time (:func:`injective_global_term`)::

    out_i = mean(V) + q_i M,   M = (s / N) k^T V - s mean(k)^T mean(V)

with one ``d x d`` matrix ``M`` per head.

A dynamic per-channel 3x3 depthwise conv of ``V`` (kernels predicted per
image from the token mean of the input) is added before the output
projection: ``proj(out + local(V))``.

Ablation switches (not in the released models): ``injective=False`` is the
ordinary division-normalised linear attention
``w_ij = q_i . k_j / (q_i . sum_j k_j + eps)`` (:func:`normalised_global_term`,
best with a non-negative kernel map), ``local_residual=False`` removes the
local term and its kernel predictor.

The reductions over all tokens run in float32 even under fp16/bf16
autocast. Parameter names follow the official code: PVT blocks have ``q``
and ``kv``, Swin blocks ``qkv``; both have ``proj`` and ``residual.{0,2}``.
"""
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention_rows import check_queries, split_heads

#: Kernel maps phi of the official ``inline_swin.py`` (applied to q and k).
KERNEL_FUNCS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'identity': lambda x: x,
    'relu': F.relu,
    'leakyrelu': lambda x: F.leaky_relu(x, 0.01),
    'exp': lambda x: torch.exp(0.2 * x),
}


def injective_global_term(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """The InLine global term ``sum_j w_ij v_j`` in linear time.

    Args:
        q (Tensor): ``(B, h, N, d)`` queries (kernel-mapped).
        k (Tensor): ``(B, h, N, d)`` keys (kernel-mapped).
        v (Tensor): ``(B, h, N, d)`` values.
        scale (float): ``s = d**-0.5``.

    Returns:
        Tensor: ``(B, h, N, d)``.
    """
    num_tokens = k.shape[-2]
    k_mean = k.mean(dim=-2, keepdim=True)  # (B, h, 1, d)
    v_mean = v.mean(dim=-2, keepdim=True)
    centred_kv = ((k.transpose(-2, -1) @ v) * (scale / num_tokens) -
                  (k_mean.transpose(-2, -1) @ v_mean) * scale)  # (B, h, d, d)
    return q @ centred_kv + v_mean


def local_residual_shown(state_dict: Dict[str, torch.Tensor],
                         attention_prefixes: List[str]) -> Dict[str, bool]:
    """``{'local_residual': ...}`` as a state dict shows it: whether its
    InLine attentions (keys under ``attention_prefixes``) have the
    ``residual`` kernel predictor; empty where they disagree or are none."""
    found = {f'{p}residual.0.weight' in state_dict for p in attention_prefixes}
    return dict(local_residual=found.pop()) if len(found) == 1 else {}


#: What keeps the ordinary (non-injective) normalisation away from 0 / 0.
NORMALISATION_EPS = 1e-6


def normalised_global_term(q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor) -> torch.Tensor:
    """Ordinary linear attention ``q_i (k^T V) / (q_i . sum_j k_j + eps)``.

    Args:
        q, k, v (Tensor): ``(B, h, N, d)`` (q and k kernel-mapped).

    Returns:
        Tensor: ``(B, h, N, d)``.
    """
    k_sum = k.sum(dim=-2, keepdim=True)  # (B, h, 1, d)
    denominator = q @ k_sum.transpose(-2, -1) + NORMALISATION_EPS
    return (q @ (k.transpose(-2, -1) @ v)) / denominator


def dynamic_depthwise_conv3x3(v: torch.Tensor,
                              kernels: torch.Tensor) -> torch.Tensor:
    """Per-image depthwise 3x3 cross-correlation with zero padding 1.

    As the official code: one conv with ``groups=B*C`` over the images'
    channels side by side (for one image a view of the channels-last map,
    for several one transposed copy of ``V``).

    Args:
        v (Tensor): (B, H, W, C) values.
        kernels (Tensor): (B, C, 1, 3, 3).

    Returns:
        Tensor: (B, H, W, C).
    """
    B, H, W, C = v.shape
    local = F.conv2d(
        v.permute(0, 3, 1, 2).reshape(1, B * C, H, W),
        kernels.reshape(B * C, 1, 3, 3), padding=1, groups=B * C)
    return local.view(B, C, H, W).permute(0, 2, 3, 1)


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
        injective (bool): Injective normalisation (official); ``False`` is
            ordinary division-normalised linear attention. Default: True.
        local_residual (bool): The dynamic local residual (official);
            ``False`` removes it with its ``residual`` kernel predictor.
            Default: True.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 qkv_layout: str = 'qkv',
                 qkv_bias: bool = True,
                 kernel_func: str = 'identity',
                 injective: bool = True,
                 local_residual: bool = True) -> None:
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
        self.injective = injective
        if qkv_layout == 'q_kv':
            self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        # the official kernel predictor: per head d -> d -> 9d
        self.residual = nn.Sequential(
            nn.Conv1d(embed_dims, embed_dims, 1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(embed_dims, 9 * embed_dims, 1, groups=num_heads)
        ) if local_residual else None

    def project_qkv(self, x: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of (..., C) tokens, the kernel map applied to q and k."""
        if self.qkv_layout == 'q_kv':
            q, (k, v) = self.q(x), self.kv(x).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        phi = KERNEL_FUNCS[self.kernel_func]
        return phi(q), phi(k), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x (Tensor): (B, H, W, C), normalised.

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        q, k, v = self.project_qkv(x)
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):

            def heads(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(B, H * W, self.num_heads, -1).transpose(
                    1, 2).to(dtype)

            if self.injective:
                out = injective_global_term(heads(q), heads(k), heads(v),
                                            self.scale)
            else:
                out = normalised_global_term(heads(q), heads(k), heads(v))
            out = out.transpose(1, 2).reshape(B, H, W, C)
            if self.residual is not None:
                kernels = self.residual(
                    x.to(dtype).mean(dim=(1, 2))[..., None])
                out = out + dynamic_depthwise_conv3x3(
                    v.to(dtype), kernels.view(B, C, 1, 3, 3))
        return self.proj(out.to(x.dtype))

    #: What :meth:`attention_rows` returns (for the analysis tools).
    attention_kind = 'inline'

    def attention_rows(self, x: torch.Tensor,
                       queries: torch.Tensor) -> torch.Tensor:
        """The global term's weights ``w_ij`` of the queries over all tokens.

        Injective (official): ``(s q_i . (k_j - mean(k)) + 1) / N``, rows
        summing to 1, weights possibly negative; with ``injective=False``:
        ``q_i . k_j / (q_i . sum_n k_n + eps)``. The dynamic local residual
        (a 3x3 conv of V added before ``proj``) is not attention over the
        tokens and is not part of the rows: ``forward`` at a query is
        ``proj(rows @ V + local(V))``.

        Args:
            x (Tensor): (B, H, W, C), what :meth:`forward` receives.
            queries (Tensor): Q flat token indices into H*W.

        Returns:
            Tensor: (B, heads, Q, H*W) float32.
        """
        B, H, W, C = x.shape
        queries = check_queries(queries, H * W)
        q, k, _ = self.project_qkv(x.reshape(B, H * W, C))
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = split_heads(q[:, queries], self.num_heads).to(dtype)
            k = split_heads(k, self.num_heads).to(dtype)
            if not self.injective:
                k_sum = k.sum(dim=-2, keepdim=True).transpose(-2, -1)
                rows = (q @ k.transpose(-2, -1)) / (
                    q @ k_sum + NORMALISATION_EPS)
                return rows.float()
            k_centred = k - k.mean(dim=-2, keepdim=True)
            rows = (self.scale * (q @ k_centred.transpose(-2, -1)) + 1) / (
                H * W)
            return rows.float()
