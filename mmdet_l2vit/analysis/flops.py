"""Multiply-accumulate counting for the backbones, on top of mmengine.

mmengine's ``FlopAnalyzer`` counts one multiply-add as one FLOP (the papers'
convention) but has no handle for ``aten::scaled_dot_product_attention``, so
window / softmax attention written with SDPA would silently count zero. This
module registers handles for every op the attentions use.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from torch import nn


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``scaled_dot_product_attention(q, k, v)``: ``q @ k^T`` plus
    ``attn @ v`` (softmax, scale and mask are elementwise and not counted,
    as for the papers' counters)."""
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *batch, n_q, d_qk = q_shape
    n_kv, d_v = k_shape[-2], v_shape[-1]
    batch_size = 1
    for size in batch:
        batch_size *= size
    return batch_size * n_q * n_kv * (d_qk + d_v)


EXTRA_HANDLES = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
}


def count_macs(model: nn.Module,
               shape: Tuple[int, int],
               batch_size: int = 1) -> Tuple[int, Dict[str, int]]:
    """Count multiply-accumulates of ``model`` on a random input.

    Args:
        model (nn.Module): A backbone (eval mode is set here).
        shape (tuple[int, int]): Input (H, W).
        batch_size (int): Batch size. Default: 1.

    Returns:
        tuple[int, dict]: Total MACs and MACs per top-level child /
        per stage (``downsample_layers.i``, ``stages.i``, ...).
    """
    model.eval()  # (some toolbox backbones return None from train())
    inputs = (torch.randn(batch_size, 3, *shape), )
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**EXTRA_HANDLES)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analyzer.total()
        by_module = analyzer.by_module()
    breakdown: Dict[str, int] = OrderedDict()
    for name, _ in model.named_modules():
        depth = name.count('.')
        if name and (depth == 0 or (depth == 1 and isinstance(
                model.get_submodule(name.split('.')[0]), nn.ModuleList))):
            if by_module.get(name, 0):
                breakdown[name] = by_module[name]
    return total, breakdown
