"""Chunked CPU inference helpers shared by the backbones.

On CPU, every fresh large tensor is page-faulted in on first touch, and glibc
gives blocks above 32 MiB back to the OS when they are freed, so at detection
resolutions a full-size intermediate per layer costs more than the layer's
arithmetic. Token-wise work (LayerNorm, the MLP, their residuals) therefore
runs in chunks of tokens whose intermediates stay in cache and are reused by
the allocator, written over the input where the caller owns it; the few maps
that must exist whole live in :class:`Workspace` buffers reused by every
block of a forward. Results equal the unchunked computation up to float32
rounding (row-wise GEMMs and LayerNorms give the same values per row).
"""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .fused import onednn_fusable

#: Working-set target of one token chunk per intra-op thread (bytes of the
#: widest per-chunk activation, e.g. the MLP hidden layer): each thread works
#: on about this much, and more threads get fewer, larger chunks (every chunk
#: op ends in a thread barrier).
CHUNK_BYTES = 8 << 20
#: Fewest tokens per chunk (keeps the per-chunk GEMMs efficient).
MIN_CHUNK_TOKENS = 256
#: Chunk size of the LayerNorm-only passes (L2-sized: their transposed
#: writes are strided).
NORM_CHUNK_BYTES = 2 << 20


def channels_last_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> contiguous (B, C, H, W), one 2-D transpose per image
    (PyTorch's blocked transpose copy; ``permute(0, 3, 1, 2).contiguous()``
    takes the generic strided copy, several times slower on CPU)."""
    B, H, W, C = x.shape
    tokens = x.reshape(B, H * W, C)
    if B == 1:
        return tokens[0].t().contiguous().view(1, C, H, W)
    out = x.new_empty(B, C, H, W)
    for i in range(B):
        out[i].view(C, H * W).copy_(tokens[i].t())
    return out


def heads_view(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, C) tokens (rows may be strided) -> (h, N, d) view, no copy."""
    N, C = x.shape
    return x.view(N, num_heads, C // num_heads).transpose(0, 1)


def chunk_tokens(num_tokens: int,
                 width: int,
                 itemsize: int,
                 chunk_bytes: Optional[int] = None) -> int:
    """Tokens per chunk: about ``chunk_bytes`` (default CHUNK_BYTES per
    intra-op thread) of ``width`` channels, at least MIN_CHUNK_TOKENS,
    balanced so the chunks have (nearly) equal size."""
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES * max(1, torch.get_num_threads())
    rows = max(MIN_CHUNK_TOKENS, chunk_bytes // max(1, width * itemsize))
    chunks = -(-num_tokens // rows)
    return -(-num_tokens // chunks)


def chunk_rows(height: int, width: int, channels: int,
               itemsize: int) -> int:
    """Image rows per chunk (bands of whole rows; see :func:`chunk_tokens`
    for ``channels`` per token)."""
    rows = max(1, chunk_tokens(height * width, channels, itemsize) // width)
    bands = -(-height // rows)
    return -(-height // bands)


class Workspace:
    """Scratch buffers shared by the blocks of one inference forward.

    On CPU every fresh large tensor is page-faulted in on first touch (and
    glibc returns blocks above 32 MiB to the OS when they are freed), so a
    buffer allocated once per forward and reused by every block is much
    cheaper than a new one per block.
    """

    def __init__(self) -> None:
        self._buffers: Dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Tuple[int, ...],
            like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous ``shape`` view of buffer ``name``."""
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get(name)
        if (buffer is None or buffer.numel() < numel
                or buffer.dtype != like.dtype
                or buffer.device != like.device):
            buffer = like.new_empty(numel)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def mlp_block_inference(x: torch.Tensor, norm: nn.Module,
                        mlp: nn.Module) -> torch.Tensor:
    """``x + mlp(norm(x))`` token-chunked for inference, written over
    ``x`` (which must be a fresh tensor the caller owns, e.g. the output of
    the attention half of the block)."""
    C = x.shape[-1]
    tokens = x.view(-1, C)
    hidden = mlp.fc1.out_features if hasattr(mlp, 'fc1') else 4 * C
    step = chunk_tokens(tokens.shape[0], hidden, x.element_size())
    for start in range(0, tokens.shape[0], step):
        chunk = tokens[start:start + step]
        tokens[start:start + step] = mlp(norm(chunk), residual=chunk)
    return x


def layer_norm_(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x)`` written over ``x`` chunk by chunk (inference: no new
    full-size tensor); ``x`` must be contiguous and owned by the caller."""
    return layer_norm_into(x, norm, x)


def layer_norm_into(x: torch.Tensor, norm: nn.Module,
                    out: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` written to ``out`` (contiguous, ``x``'s shape; may be
    ``x``) chunk by chunk, for inference."""
    C = x.shape[-1]
    tokens, out_tokens = x.reshape(-1, C), out.view(-1, C)
    step = chunk_tokens(tokens.shape[0], C, x.element_size(),
                        min(CHUNK_BYTES, NORM_CHUNK_BYTES))
    for start in range(0, tokens.shape[0], step):
        out_tokens[start:start + step] = norm(tokens[start:start + step])
    return out


def layer_norm_to_nchw(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x)`` of a (B, H, W, C) map as a contiguous (B, C, H, W)
    tensor, normalised chunk by chunk and written transposed (inference;
    one full-size tensor, the output)."""
    B, H, W, C = x.shape
    tokens = x.reshape(B, H * W, C)
    out = x.new_empty(B, C, H, W)
    planes = out.view(B, C, H * W)
    step = chunk_tokens(H * W, C, x.element_size(),
                         min(CHUNK_BYTES, NORM_CHUNK_BYTES))
    for i in range(B):
        for start in range(0, H * W, step):
            planes[i, :, start:start + step] = norm(
                tokens[i, start:start + step]).t()
    return out


def norm_to_nchw(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x)`` of a (B, H, W, C) map as a contiguous (B, C, H, W) tensor:
    chunked for CPU inference (:func:`layer_norm_to_nchw`), else one
    LayerNorm and one transpose (differentiable)."""
    if onednn_fusable(x):
        return layer_norm_to_nchw(x, norm)
    return channels_last_to_nchw(norm(x))
