"""Metrics of attention rows: concentration, locality and injectivity.

Pure functions of rows as the attention modules' ``attention_rows`` return
them: ``(..., Q, N)`` weights of Q queries over the N = H*W tokens of a map
(row-major), leading dimensions typically (batch, heads).

Every metric reads the *absolute* weights ``|w|``: the InLine weights can be
negative, and a negative weight mixes in a value as much as a positive one.

- :func:`row_entropy`: Shannon entropy (nats) of ``|w| / sum |w|``; a
  uniform row has ``log N``, a one-hot row 0.
- :func:`local_share`: the share of ``|w|`` inside the query's k x k
  neighbourhood (clipped at the borders).
- :func:`collision_count`: pairs of queries whose rows are (nearly)
  identical, InLine's injectivity argument; distances
  :func:`row_distances`.

A row of zeros (e.g. a linear-attention query whose ReLU features are all
zero) has no distribution: its entropy and local shares are NaN, which the
summaries skip (``nanmean``); two zero rows are identical (they collide).
"""
import math
from typing import Dict, Tuple

import torch

#: Distances :func:`row_distances` knows.
DISTANCES = ('max_abs', 'cosine')


def row_distribution(rows: torch.Tensor) -> torch.Tensor:
    """``|w| / sum |w|`` along the last dim (NaN rows where all are 0)."""
    magnitude = rows.abs()
    return magnitude / magnitude.sum(dim=-1, keepdim=True)


def row_entropy(rows: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row's absolute weights, normalised to sum 1.

    Args:
        rows (Tensor): (..., N) attention weights.

    Returns:
        Tensor: (...,) float; ``log N`` for a uniform row, 0 for a one-hot
        row, NaN for a row of zeros.
    """
    return torch.special.entr(row_distribution(rows.float())).sum(dim=-1)


def neighbourhood_mask(queries: torch.Tensor, map_size: Tuple[int, int],
                       kernel_size: int) -> torch.Tensor:
    """Tokens within the k x k neighbourhood of each query.

    Args:
        queries (Tensor): (Q,) flat token indices into H*W.
        map_size (tuple[int, int]): (H, W).
        kernel_size (int): Odd side k of the neighbourhood.

    Returns:
        Tensor: (Q, H*W) bool.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be odd, got {kernel_size}.')
    H, W = map_size
    radius = kernel_size // 2
    rows = torch.arange(H, device=queries.device)
    cols = torch.arange(W, device=queries.device)
    near_rows = (rows[None] - (queries // W)[:, None]).abs() <= radius
    near_cols = (cols[None] - (queries % W)[:, None]).abs() <= radius
    return (near_rows[:, :, None] & near_cols[:, None, :]).view(-1, H * W)


def local_share(rows: torch.Tensor, queries: torch.Tensor,
                map_size: Tuple[int, int],
                kernel_size: int = 3) -> torch.Tensor:
    """Share of each row's absolute weight inside its query's k x k
    neighbourhood.

    Args:
        rows (Tensor): (..., Q, H*W) attention weights.
        queries (Tensor): (Q,) flat token indices of the rows' queries.
        map_size (tuple[int, int]): (H, W).
        kernel_size (int): Odd side k. Default: 3.

    Returns:
        Tensor: (..., Q) in [0, 1] (NaN for rows of zeros).
    """
    mask = neighbourhood_mask(queries, map_size, kernel_size)
    return (row_distribution(rows.float()) * mask).sum(dim=-1)


def row_distances(rows: torch.Tensor, metric: str = 'max_abs'
                  ) -> torch.Tensor:
    """Pairwise distances between the rows of each (..., Q, N) stack.

    Args:
        rows (Tensor): (..., Q, N) attention weights.
        metric (str): ``'max_abs'``: ``max_n |w_in - w_jn|`` divided by the
            larger of the two rows' ``max_n |w_n|`` (scale free: 0 for
            identical rows, at most 2); ``'cosine'``: ``1 - cos(w_i, w_j)``.
            Two rows of zeros are at distance 0. Default: 'max_abs'.

    Returns:
        Tensor: (..., Q, Q) float32.
    """
    if metric not in DISTANCES:
        raise ValueError(f'unknown metric {metric!r}; choose one of '
                         f'{DISTANCES}.')
    rows = rows.float()
    lead, (Q, N) = rows.shape[:-2], rows.shape[-2:]
    flat = rows.reshape(-1, Q, N)
    peak = flat.abs().amax(dim=-1)  # (M, Q)
    if metric == 'max_abs':
        scale = torch.maximum(peak[:, :, None], peak[:, None, :])
        distance = torch.cdist(flat, flat, p=float('inf')) / scale
    else:
        unit = torch.nn.functional.normalize(flat, dim=-1)
        distance = 1 - unit @ unit.transpose(-2, -1)
    both_zero = (peak[:, :, None] == 0) & (peak[:, None, :] == 0)
    distance = distance.masked_fill(both_zero, 0.).nan_to_num(1.)
    return distance.view(*lead, Q, Q)


def collision_count(rows: torch.Tensor, threshold: float = 1e-3,
                    metric: str = 'max_abs') -> torch.Tensor:
    """Pairs of distinct queries whose rows are nearly identical.

    Args:
        rows (Tensor): (..., Q, N) rows of Q distinct queries.
        threshold (float): Pairs at distance below it collide.
            Default: 1e-3.
        metric (str): See :func:`row_distances`. Default: 'max_abs'.

    Returns:
        Tensor: (...,) int64 counts of unordered pairs ``i < j``, out of
        ``Q (Q - 1) / 2``.
    """
    distance = row_distances(rows, metric)
    Q = distance.shape[-1]
    upper = torch.ones(Q, Q, dtype=torch.bool,
                       device=rows.device).triu(diagonal=1)
    return ((distance < threshold) & upper).sum(dim=(-2, -1))


def summarise_rows(rows: torch.Tensor, queries: torch.Tensor,
                   map_size: Tuple[int, int], threshold: float = 1e-3,
                   metric: str = 'max_abs') -> Dict[str, float]:
    """All metrics of one layer's rows, averaged over images, heads and
    queries.

    Args:
        rows (Tensor): (B, heads, Q, H*W).
        queries (Tensor): (Q,) distinct flat token indices.
        map_size (tuple[int, int]): (H, W).
        threshold (float): Collision threshold. Default: 1e-3.
        metric (str): Collision distance. Default: 'max_abs'.

    Returns:
        dict: ``entropy`` (nats), ``normalised_entropy`` (entropy / log N),
        ``local_share_3``, ``local_share_7``, ``collisions`` (pairs, summed
        over images and heads), ``pairs`` (pairs examined) and
        ``collision_fraction``.
    """
    num_tokens = map_size[0] * map_size[1]
    entropy = row_entropy(rows).nanmean().item()
    share_3 = local_share(rows, queries, map_size, 3).nanmean().item()
    share_7 = local_share(rows, queries, map_size, 7).nanmean().item()
    collisions = int(collision_count(rows, threshold, metric).sum())
    Q = queries.numel()
    pairs = rows.shape[:-2].numel() * Q * (Q - 1) // 2
    return dict(
        entropy=entropy,
        normalised_entropy=entropy / math.log(num_tokens)
        if num_tokens > 1 else float('nan'),
        local_share_3=share_3,
        local_share_7=share_7,
        collisions=collisions,
        pairs=pairs,
        collision_fraction=collisions / pairs if pairs else float('nan'))
