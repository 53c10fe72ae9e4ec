"""The grouped step profile of ``tools/benchmark.py --profile``: ops land
in their kind and phase (no timing is asserted, only where time went)."""
import torch
from torch import nn

from mmdet_l2vit.analysis.step_profile import (OP_KINDS, op_kind,
                                               profile_markdown,
                                               profile_step)


def test_op_kinds():
    assert op_kind('aten::addmm') == 'matmul / linear'
    assert op_kind('aten::addmm_') == 'matmul / linear'
    assert op_kind('aten::add_') == 'elementwise'
    assert op_kind('aten::mkldnn_convolution') == 'conv'
    assert op_kind('aten::convolution_backward') == 'conv'
    assert op_kind('aten::native_layer_norm_backward') == 'layer norm'
    assert op_kind('aten::gelu_backward') == 'GELU / softmax / ReLU'
    assert op_kind('aten::copy_') == 'copy / layout'
    assert op_kind('aten::_scaled_dot_product_flash_attention_for_cpu') == \
        'attention (SDPA)'
    assert op_kind('aten::frobnicate') == 'other'


def test_profile_step_splits_forward_and_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LayerNorm(392),
                          nn.GELU(), nn.Linear(392, 4))
    x = torch.randn(2, 3, 9, 9)
    profile = profile_step(lambda: model(x).sum(), model)
    phases = {phase for phase, _ in profile}
    assert phases == {'forward', 'backward'}
    for phase in phases:
        for kind in ('conv', 'matmul / linear', 'layer norm',
                     'GELU / softmax / ReLU'):
            assert profile.get((phase, kind), 0) > 0, (phase, kind)
    assert all(p.grad is None for p in model.parameters())
    table = profile_markdown({'tiny': profile})
    assert table.splitlines()[0] == ('| kind | tiny fwd ms | tiny bwd ms |')
    assert '| **total** |' in table
    assert {k for k, _ in OP_KINDS} >= {'conv', 'layer norm'}
