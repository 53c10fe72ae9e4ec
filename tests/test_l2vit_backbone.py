"""L²ViT backbone contract: shapes, freezing, norm_eval, with_cp, autocast."""
import math

import pytest
import torch
from timm.layers import DropPath
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet_l2vit import L2ViT

SMALL_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8])


def expected_sizes(h: int, w: int):
    sizes = [(math.ceil(h / 4), math.ceil(w / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2),
                      math.ceil(sizes[-1][1] / 2)))
    return sizes


@pytest.mark.parametrize('hw', [(33, 33), (97, 131), (511, 511), (20, 13),
                                (5, 3)])
def test_output_shapes_follow_ceil_rule(hw):
    model = L2ViT(arch=SMALL_ARCH).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert isinstance(outs, tuple)
    for out, dims, size in zip(outs, SMALL_ARCH['embed_dims'],
                               expected_sizes(*hw)):
        assert out.shape == (1, dims, *size)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('batch, hw, shrink', [(1, (97, 131), True),
                                             (2, (70, 64), True),
                                             (2, (61, 45), False)])
def test_chunked_inference_equals_autograd_path(small_chunks, batch, hw,
                                                shrink):
    """CPU inference runs banded window attention, two-pass chunked linear
    attention and chunked MLPs in place; it must equal the plain path."""
    if shrink:
        small_chunks(24)
    torch.manual_seed(0)
    model = L2ViT(arch=dict(SMALL_ARCH, num_heads=[2, 2, 4, 8])).eval()
    x = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        fast = model(x)
    plain = model(x)  # grad enabled: the plain, differentiable path
    for a, b in zip(fast, plain):
        assert a.is_contiguous() and a.shape == b.shape
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize('block_type', ['LWABlock', 'LGABlock'])
def test_inference_blocks_write_over_input_only_when_asked(block_type):
    from mmdet_l2vit.models.layers import l2vit_blocks
    torch.manual_seed(0)
    if block_type == 'LWABlock':
        block = l2vit_blocks.LWABlock(16, 2, 7, 4., 0.).eval()
    else:
        block = l2vit_blocks.LGABlock(16, 2, 4., 0.).eval()
    x = torch.randn(2, 11, 9, 16)
    original = x.clone()
    with torch.no_grad():
        out = block(x)
        assert torch.equal(x, original)
        inplace = block(x, inplace=True)
    assert inplace.data_ptr() == x.data_ptr()
    torch.testing.assert_close(inplace, out, rtol=0, atol=0)
    torch.testing.assert_close(out, block(original).detach(), rtol=0,
                               atol=1e-5)


def test_named_archs_and_head_dims():
    tiny = L2ViT(arch='tiny')
    assert [s[1].attn.num_heads for s in tiny.stages] == [3, 6, 12, 24]
    assert tiny.window_size == 7
    assert L2ViT(arch='base-384', out_indices=(3, )).window_size == 12
    # head dim 24 (not 32): derived from embed_dims / num_heads
    model = L2ViT(arch=dict(embed_dims=[48, 96, 192, 384],
                            depths=[1, 2, 1, 2], num_heads=[2, 4, 8, 16],
                            window_size=5)).eval()
    assert model.stages[1][1].attn.temperature.flatten().tolist() == \
        pytest.approx([24**-0.5] * 4)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 80))
    assert [o.shape[1] for o in outs] == [48, 96, 192, 384]


def test_out_indices_build_only_those_norms():
    model = L2ViT(arch=SMALL_ARCH, out_indices=(1, 2, 3)).eval()
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64, 128]


def test_block_order_and_drop_path_schedule():
    model = L2ViT(arch=dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 4, 2],
                            num_heads=[1, 2, 4, 8]), drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage]
    assert [type(b).__name__ for b in blocks] == ['LWABlock', 'LGABlock'] * 5
    rates = [0.0 if isinstance(b.drop_path, nn.Identity) else
             b.drop_path.drop_prob for b in blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 10).tolist())
    assert isinstance(blocks[0].drop_path, nn.Identity)
    assert isinstance(blocks[-1].drop_path, DropPath)


@pytest.mark.parametrize('frozen_stages', [0, 2, 4])
def test_frozen_stages_stay_frozen_through_train(frozen_stages):
    model = L2ViT(arch=SMALL_ARCH, frozen_stages=frozen_stages)
    model.train()
    frozen = [model.downsample_layers[0]]
    trainable = []
    for i in range(4):
        group = [model.stages[i], getattr(model, f'norm{i}')]
        if i > 0:
            group.append(model.downsample_layers[i])
        (frozen if i < frozen_stages else trainable).extend(group)
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for module in trainable:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())


def test_norm_eval_keeps_batchnorm_in_eval_mode():
    model = L2ViT(arch=SMALL_ARCH, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 2 + 4  # stem and one LCM per stage
    assert all(not bn.training for bn in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, bns[0].running_mean)
    assert model.stages[0][0].training
    model = L2ViT(arch=SMALL_ARCH, norm_eval=False).train()
    assert all(m.training for m in model.modules() if isinstance(m, _BatchNorm))


def test_with_cp_gives_same_outputs_gradients_and_bn_stats():
    torch.manual_seed(0)
    plain = L2ViT(arch=SMALL_ARCH, drop_path_rate=0.3)
    plain.init_weights()
    ckpt = L2ViT(arch=SMALL_ARCH, drop_path_rate=0.3, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 45, 61)
    results = []
    for model in (plain, ckpt):
        model.train()
        inputs = x.clone().requires_grad_()
        torch.manual_seed(1)
        outs = model(inputs)
        sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
        results.append((outs, inputs.grad,
                        {n: p.grad for n, p in model.named_parameters()},
                        {n: b.clone() for n, b in model.named_buffers()}))
    (outs_a, gx_a, grads_a, bufs_a), (outs_b, gx_b, grads_b, bufs_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5,
                                   atol=1e-6, msg=name)
    for name in bufs_a:
        torch.testing.assert_close(bufs_a[name], bufs_b[name], msg=name)


def test_bf16_autocast_at_detection_resolution_is_finite_and_close():
    torch.manual_seed(0)
    model = L2ViT(arch=dict(embed_dims=[16, 32, 64, 128], depths=[1, 2, 1, 2],
                            num_heads=[1, 2, 4, 8]))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 800, 1216)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for ref, out in zip(reference, low):
        assert out.dtype in (torch.bfloat16, torch.float32)
        assert torch.isfinite(out).all()
        error = (out.float() - ref).norm() / ref.norm()
        assert error < 0.05, error


def test_linear_attention_does_not_overflow_under_fp16_autocast():
    """Sums over ~60k tokens exceed the fp16 range (65504); the reductions
    must run in float32 while the projections stay in half precision."""
    torch.manual_seed(0)
    attn = L2ViT(arch=SMALL_ARCH).eval().stages[0][1].attn
    x = torch.randn(1, 200, 304, 16) * 4
    with torch.no_grad():
        reference = attn(x)
        k_sum = torch.relu(attn.qkv(x)[..., 16:32]).sum((0, 1, 2))
        assert k_sum.max() > 65504  # would overflow in fp16
        with torch.autocast('cpu', dtype=torch.float16):
            half = attn(x)
    assert half.dtype == torch.float16  # the projections ran in fp16
    assert torch.isfinite(half).all()
    error = (half.float() - reference).norm() / reference.norm()
    assert error < 1e-2, error


def test_compile_option_traces_the_whole_backbone():
    """``compile`` wraps the backbone in torch.compile; ``fullgraph=True``
    proves dynamo captures it without graph breaks (the eager backend keeps
    the test fast; inductor is exercised by tools/benchmark.py)."""
    torch.manual_seed(0)
    eager = L2ViT(arch=SMALL_ARCH).eval()
    compiled = L2ViT(arch=SMALL_ARCH, compile=dict(backend='eager',
                                                   fullgraph=True)).eval()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        for a, b in zip(eager(x), compiled(x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match='compile must be'):
        L2ViT(arch=SMALL_ARCH, compile='yes')
