"""Token chunks, row bands and reused buffers of the CPU inference engine.

On CPU, every fresh large tensor is page-faulted in on first touch, and glibc
gives blocks above 32 MiB back to the OS when they are freed, so at detection
resolutions a full-size intermediate per layer costs more than the layer's
arithmetic. Token-wise work (LayerNorm, the MLP, their residuals) therefore
runs in chunks of tokens whose intermediates stay in cache and are reused by
the allocator, written over a map the engine owns; the few maps that must
exist whole live in :class:`Workspace` buffers reused by every block of a
forward. Results equal the unchunked computation up to float32 rounding
(row-wise GEMMs and LayerNorms give the same values per row).

The sizes below are module globals read at call time (tests shrink them to
force many chunks and bands).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers.common import channels_last_to_nchw
from .onednn import mlp_add

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
    """Image rows per band (bands of whole rows; ``channels`` per token as
    in :func:`chunk_tokens`), balanced over the height."""
    rows = max(1, chunk_tokens(height * width, channels, itemsize) // width)
    bands = -(-height // rows)
    return -(-height // bands)


def token_spans(num_tokens: int, step: int) -> List[slice]:
    """Consecutive slices of ``step`` tokens covering ``num_tokens``."""
    return [
        slice(start, min(start + step, num_tokens))
        for start in range(0, num_tokens, step)
    ]


def row_bands(height: int, rows: int) -> List[Tuple[int, int]]:
    """``(top, bottom)`` of consecutive bands of ``rows`` image rows."""
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


def heads_view(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, C) tokens (rows may be strided) -> (h, N, d) view, no copy."""
    N, C = x.shape
    return x.view(N, num_heads, C // num_heads).transpose(0, 1)


class Workspace:
    """Scratch buffers shared by the blocks of one inference forward.

    On CPU every fresh large tensor is page-faulted in on first touch (and
    glibc returns blocks above 32 MiB to the OS when they are freed), so a
    buffer allocated once per forward and reused by every block is much
    cheaper than a new one per block. A buffer grows to the largest request
    under its name; callers name what it holds.
    """

    def __init__(self) -> None:
        self._buffers: Dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Tuple[int, ...],
            like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous ``shape`` view of buffer ``name``
        (``like``'s dtype and device)."""
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


def layer_norm_into(x: torch.Tensor, norm: nn.Module,
                    out: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` written to ``out`` chunk by chunk.

    Args:
        x (Tensor): (..., C) tokens.
        norm (nn.Module): The LayerNorm.
        out (Tensor): Contiguous, ``x``'s shape; may be ``x`` itself (each
            chunk is read before it is overwritten).

    Returns:
        Tensor: ``out``.
    """
    C = x.shape[-1]
    tokens, out_tokens = x.reshape(-1, C), out.view(-1, C)
    step = chunk_tokens(tokens.shape[0], C, x.element_size(),
                        min(CHUNK_BYTES, NORM_CHUNK_BYTES))
    for span in token_spans(tokens.shape[0], step):
        out_tokens[span] = norm(tokens[span])
    return out


def layer_norm_to_nchw(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x)`` of a (B, H, W, C) map as a contiguous (B, C, H, W)
    tensor, normalised chunk by chunk and written transposed (one full-size
    tensor: the output)."""
    B, H, W, C = x.shape
    tokens = x.reshape(B, H * W, C)
    out = x.new_empty(B, C, H, W)
    planes = out.view(B, C, H * W)
    step = chunk_tokens(H * W, C, x.element_size(),
                        min(CHUNK_BYTES, NORM_CHUNK_BYTES))
    spans = token_spans(H * W, step)
    for i in range(B):
        for span in spans:
            planes[i, :, span] = norm(tokens[i, span]).t()
    return out


def mlp_residual_(x: torch.Tensor, norm: nn.Module,
                  mlp: nn.Module) -> torch.Tensor:
    """``x += mlp(norm(x))`` in token chunks, in place.

    Args:
        x (Tensor): (..., C), contiguous, owned by the engine.
        norm (nn.Module): The pre-norm.
        mlp (nn.Module): The MLP (``fc1``, exact GELU, ``fc2``).

    Returns:
        Tensor: ``x``.
    """
    C = x.shape[-1]
    tokens = x.view(-1, C)
    step = chunk_tokens(tokens.shape[0], mlp.fc1.out_features,
                        x.element_size())
    for span in token_spans(tokens.shape[0], step):
        chunk = tokens[span]
        tokens[span] = mlp_add(norm(chunk), mlp, chunk)
    return x


def nchw_outputs(backbone: nn.Module, stage_outputs: Sequence[torch.Tensor]
                 ) -> Tuple[torch.Tensor, ...]:
    """The backbone's outputs from its stage maps: each output index's map
    through its output norm (``backbone.output_norm(i)``; chunked, written
    transposed) or, where that is an identity, transposed.

    Args:
        backbone (nn.Module): The backbone (``out_indices``,
            ``output_norm``).
        stage_outputs (Sequence[Tensor]): (B, H_i, W_i, C_i) map of stage
            ``i``, at least up to the last output index.

    Returns:
        tuple[Tensor]: One contiguous (B, C_i, H_i, W_i) map per
        ``backbone.out_indices``.
    """
    outs = []
    for i in backbone.out_indices:
        norm = backbone.output_norm(i)
        if isinstance(norm, nn.Identity):
            outs.append(channels_last_to_nchw(stage_outputs[i]))
        else:
            outs.append(layer_norm_to_nchw(stage_outputs[i], norm))
    return tuple(outs)
