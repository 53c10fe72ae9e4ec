"""InLine-PVT specifics: official parity, the InLine attention maths,
position embeddings resized per stage, optional output norms and the
official checkpoint layouts. The backbone contract shared with the other
families is tested in test_backbone_contract.py."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import InLinePVT
from mmdet_l2vit.checkpoint import (extract_state_dict,
                                    load_state_dict_strictly,
                                    read_checkpoint_file)
from mmdet_l2vit.models.layers import inline_attention
from mmdet_l2vit.models.layers.inline_attention import (KERNEL_FUNCS,
                                                        InLineAttention)

from conftest import expected_engine_calls

R1_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
               num_heads=[1, 2, 4, 8], mlp_ratios=[8, 8, 4, 4])
SMALL_ARCH = dict(R1_ARCH, depths=[1, 1, 1, 1])
TOLERANCE = 1e-5


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def random_model(arch=SMALL_ARCH, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = InLinePVT(arch=arch, **kwargs)
    model.init_weights()
    return model.eval()


# ---------------------------------------------------------------- parity
@pytest.fixture(scope='module')
def r1(reference_file):
    path = str(reference_file('inline_pvt_r1_cls.pth'))
    model = InLinePVT(arch=R1_ARCH, init_cfg=pretrained(path))
    model.init_weights()
    state_dict, _ = extract_state_dict(read_checkpoint_file(path))
    expected = torch.load(reference_file('inline_pvt_r1_expected.pt'),
                          weights_only=True)
    return model.eval(), state_dict, expected


@pytest.mark.parametrize('inference', ['reference', 'auto'])
@pytest.mark.parametrize('size', ['224', '120x152'])
def test_stage_tokens_and_logits_match_official(r1, size, inference,
                                                engine_calls):
    """Stage tokens and logits of the reference modules; the outputs (no
    output norms: the raw stage maps) of the reference modules and of the
    default (the CPU inference engine where it applies)."""
    model, state_dict, expected = r1
    model.inference = inference
    with torch.no_grad():
        stages = model.forward_stages(expected[f'input_{size}'])
        # The classification tail: mean over stage-4 tokens -> head (no
        # final norm in InLine-PVT).
        logits = F.linear(stages[3].mean((1, 2)), state_dict['head.weight'],
                          state_dict['head.bias'])
        outs = model(expected[f'input_{size}'])
    assert len(engine_calls) == expected_engine_calls(inference)
    refs = expected[f'stage_tokens_{size}']
    assert len(outs) == len(refs) == 4
    for stage, out, ref in zip(stages, outs, refs):
        assert max_abs_diff(stage.permute(0, 3, 1, 2), ref) <= TOLERANCE
        assert max_abs_diff(out, ref) <= TOLERANCE
    assert max_abs_diff(logits, expected[f'logits_{size}']) <= TOLERANCE


def test_checkpoint_report_and_values(r1, reference_file):
    model, state_dict, _ = r1
    converted = model.load_pretrained(
        str(reference_file('inline_pvt_r1_cls.pth')))
    assert converted.dropped == ['head.weight', 'head.bias']
    assert converted.created == []
    assert len(converted.kept) == 164
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    assert InLinePVT.infer_arch_from_state_dict(state_dict) == R1_ARCH
    assert model.block4[0].norm1.eps == 1e-6
    assert model.patch_embed3.norm.eps == 1e-5


# ---------------------------------------------------------- attention math
def inline_oracle(attn: InLineAttention, x: torch.Tensor,
                  kernel_func: str = 'identity') -> torch.Tensor:
    """Explicit N x N InLine weights plus the official B*C-group conv, in
    float64, written independently of the implementation (on a float64
    copy of ``attn``, or on ``attn`` itself if it is float64)."""
    if attn.proj.weight.dtype != torch.float64:
        attn = copy.deepcopy(attn).double()
    x = x.double()
    B, H, W, C = x.shape
    N, h = H * W, attn.num_heads
    d = C // h
    s = d**-0.5
    phi = KERNEL_FUNCS[kernel_func]
    tokens = x.reshape(B, N, C)
    q = phi(attn.q(tokens))
    kv = attn.kv(tokens)
    k, v = phi(kv[..., :C]), kv[..., C:]
    q, k, vh = (t.reshape(B, N, h, d).transpose(1, 2) for t in (q, k, v))
    k_mean = k.mean(dim=2, keepdim=True)
    weights = (s * q @ k.transpose(-2, -1) - s * q @ k_mean.transpose(
        -2, -1) + 1) / N
    torch.testing.assert_close(weights.sum(-1),
                               torch.ones(B, h, N, dtype=torch.float64))
    out = (weights @ vh).transpose(1, 2).reshape(B, N, C)
    kernels = attn.residual(tokens.mean(1).unsqueeze(-1))  # (B, 9C, 1)
    # the local term as its nine shifted products (zero padding 1)
    padded = F.pad(v.reshape(B, H, W, C), (0, 0, 1, 1, 1, 1))
    taps = kernels.reshape(B, 1, 1, C, 3, 3)
    local = sum(padded[:, dy:dy + H, dx:dx + W] * taps[..., dy, dx]
                for dy in range(3) for dx in range(3)).reshape(B, N, C)
    return attn.proj(out + local).reshape(B, H, W, C)


@pytest.mark.parametrize('kernel_func', sorted(KERNEL_FUNCS))
def test_inline_attention_equals_explicit_weights(kernel_func):
    torch.manual_seed(0)
    # head dim 8: nothing assumes 32 (or 16)
    attn = InLineAttention(24, 3, qkv_layout='q_kv', kernel_func=kernel_func)
    for module in attn.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.3)
            nn.init.normal_(module.bias, std=0.3)
    x = torch.randn(2, 5, 7, 24)
    with torch.no_grad():
        reference = inline_oracle(attn, x, kernel_func)
        out64 = attn.double()(x.double())
        out32 = attn.float()(x)
    torch.testing.assert_close(out64, reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(out32.double(), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize('layout', ['q_kv', 'qkv'])
def test_inline_attention_gradients_equal_explicit_weights(layout):
    """Input and parameter gradients of the linear-time maths (float32)
    against autograd through the explicit N x N weights (float64)."""
    torch.manual_seed(0)
    attn = InLineAttention(24, 3, qkv_layout=layout)
    for module in attn.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.3)
            nn.init.normal_(module.bias, std=0.3)
    x = torch.randn(2, 5, 7, 24)
    weights = torch.randn(2, 5, 7, 24)

    def gradients(module, inputs, run):
        inputs = inputs.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        (run(module, inputs) * weights.to(inputs.dtype)).sum().backward()
        return [inputs.grad] + [p.grad for p in module.parameters()]

    oracle64 = copy.deepcopy(attn).double()
    if layout == 'qkv':  # the oracle reads q and kv projections
        q_kv = InLineAttention(24, 3, qkv_layout='q_kv').double()
        q_kv.load_state_dict(dict(
            {k: v for k, v in oracle64.state_dict().items()
             if not k.startswith('qkv')},
            **{'q.weight': oracle64.qkv.weight[:24],
               'q.bias': oracle64.qkv.bias[:24],
               'kv.weight': oracle64.qkv.weight[24:],
               'kv.bias': oracle64.qkv.bias[24:]}))
        oracle64 = q_kv
    reference = gradients(oracle64, x.double(),
                          lambda m, t: inline_oracle(m, t, 'identity'))
    ours = gradients(attn, x, lambda m, t: m(t))
    if layout == 'qkv':  # q and kv gradients stacked as qkv's
        reference = reference[:1] + [torch.cat([reference[1], reference[3]]),
                                     torch.cat([reference[2], reference[4]])
                                     ] + reference[5:]
    assert len(ours) == len(reference)
    for grad, expected in zip(ours, reference):
        error = (grad.double() - expected).abs().max() / expected.abs().max()
        assert error <= 1e-5, error


def test_constant_values_pass_through_global_term():
    """Rows of the implied weights sum to one (no eps): constant V comes out
    unchanged, whatever the queries and keys."""
    torch.manual_seed(0)
    attn = InLineAttention(16, 2, qkv_layout='q_kv')
    with torch.no_grad():
        attn.kv.weight[16:] = 0  # V = kv bias for every token
        attn.residual[2].weight.zero_()
        attn.residual[2].bias.zero_()  # no local term
        attn.proj.weight.copy_(torch.eye(16))
        attn.proj.bias.zero_()
        out = attn(torch.randn(1, 6, 9, 16) * 3)
    torch.testing.assert_close(out, attn.kv.bias[16:].expand(1, 6, 9, 16),
                               rtol=0, atol=1e-5)


def test_reductions_stay_fp32_under_fp16_autocast(monkeypatch):
    """K^T V over ~60k tokens exceeds the fp16 range (65504): the global
    term runs in float32 while the projections run in half precision."""
    torch.manual_seed(0)
    attn = InLineAttention(16, 2, qkv_layout='q_kv').eval()
    x = torch.randn(1, 200, 304, 16) * 4
    global_term_dtypes, projected = [], []
    global_term = inline_attention.injective_global_term

    def recording_global_term(q, k, v, scale):
        out = global_term(q, k, v, scale)
        global_term_dtypes.append((q.dtype, k.dtype, v.dtype, out.dtype))
        return out

    monkeypatch.setattr(inline_attention, 'injective_global_term',
                        recording_global_term)
    for layer in (attn.q, attn.kv, attn.proj):
        layer.register_forward_hook(
            lambda module, args, out: projected.append(out.dtype))
    with torch.no_grad():
        reference = attn(x)
        # K^T V summed over 60800 tokens exceeds the fp16 range
        kv = attn.kv(x).flatten(1, 2)
        assert (kv[..., :16].transpose(1, 2) @ kv[..., 16:]).abs().max() > \
            65504
        projected.clear()
        global_term_dtypes.clear()
        with torch.autocast('cpu', dtype=torch.float16):
            half = attn(x)
    assert projected == [torch.float16] * 3
    assert global_term_dtypes == [(torch.float32, ) * 4]
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    error = (half.float() - reference).norm() / reference.norm()
    assert error < 1e-2, error


def test_pos_embed_is_resized_from_each_stages_own_grid():
    model = random_model()
    assert model.pos_grids == [(56, 56), (28, 28), (14, 14), (7, 7)]

    def resized(stage, h, w):
        pos = getattr(model, f'pos_embed{stage + 1}')
        grid = model.pos_grids[stage]
        pos = pos.reshape(1, *grid, -1).permute(0, 3, 1, 2)
        return F.interpolate(pos, size=(h, w), mode='bilinear',
                             align_corners=False).permute(0, 2, 3, 1)

    with torch.no_grad():
        for stage, grid in enumerate(model.pos_grids):
            # at its own grid a stage uses its embedding as stored, which
            # equals the official same-size bilinear resize
            own = model.stage_pos_embed(stage, *grid)
            assert torch.equal(own.reshape(1, -1, own.shape[-1]),
                               getattr(model, f'pos_embed{stage + 1}'))
            torch.testing.assert_close(own, resized(stage, *grid), rtol=0,
                                       atol=1e-6)
        # 448x448: stage 2 is 56x56 = 3136 tokens (the official code
        # compares with stage 1's count and crashes here)
        torch.testing.assert_close(model.stage_pos_embed(1, 56, 56),
                                   resized(1, 56, 56))
        # a non-square stage-1 grid with 3136 tokens is resized too (the
        # official code silently uses the 56x56 table)
        torch.testing.assert_close(model.stage_pos_embed(0, 112, 28),
                                   resized(0, 112, 28))
        outs = model(torch.randn(1, 3, 448, 448))
    assert [tuple(o.shape[2:]) for o in outs] == [(112, 112), (56, 56),
                                                  (28, 28), (14, 14)]


# ---------------------------------------------------------------- options
def test_named_archs():
    for name, depths in [('tiny', [2, 2, 2, 2]), ('small', [3, 4, 6, 3]),
                         ('medium', [3, 4, 18, 3]), ('large', [3, 8, 27, 3])]:
        with torch.device('meta'):
            model = InLinePVT(arch=name)
        assert [len(getattr(model, f'block{i}')) for i in range(1, 5)] == \
            depths
        assert [getattr(model, f'block{i}')[0].attn.num_heads
                for i in range(1, 5)] == [2, 4, 10, 16]
        assert {getattr(model, f'block{i}')[0].attn.head_dims
                for i in range(1, 5)} == {32}


def test_out_indices_and_optional_out_norms():
    model = random_model(out_indices=(1, 3))
    assert not any(n.startswith('norm') for n, _ in model.named_children())
    torch.manual_seed(0)
    normed = InLinePVT(arch=SMALL_ARCH, out_indices=(1, 3), out_norms=True)
    normed.load_state_dict(model.state_dict(), strict=False)
    assert [n for n, _ in normed.named_children() if n.startswith('norm')] \
        == ['norm1', 'norm3']
    assert normed.norm1.eps == 1e-6
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = model(x)
        normed_outs = normed.eval()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 12), (1, 128, 2, 3)]
    stage = model.forward_stages(x)[3]
    torch.testing.assert_close(
        normed_outs[1],
        F.layer_norm(stage, (128, ), eps=1e-6).permute(0, 3, 1, 2))


# ------------------------------------------------------ checkpoints, layouts
@pytest.mark.parametrize('name, arch', [('T', 'tiny'), ('S', 'small'),
                                        ('M', 'medium'), ('L', 'large')])
def test_full_size_official_layout_converts_exactly(reference_file, name,
                                                    arch):
    layouts = json.loads(reference_file('official_keys.json').read_text())
    official = layouts[f'InLine_PVT_{name}']['keys']
    state_dict = {
        key: torch.empty(shape, dtype=getattr(torch, dtype), device='meta')
        for key, shape, dtype in official
    }
    assert InLinePVT.infer_arch_from_state_dict(state_dict) == \
        InLinePVT.arch_zoo[arch]
    with torch.device('meta'):
        model = InLinePVT(arch=arch)
    converted = model.convert_official_state_dict(state_dict)
    assert converted.dropped == ['head.weight', 'head.bias']
    assert converted.created == []
    own = model.state_dict()
    assert list(converted.state_dict) == [k for k, _, _ in official
                                          if not k.startswith('head.')]
    assert {k: v.shape for k, v in converted.state_dict.items()} == \
        {k: v.shape for k, v in own.items()}
    load_state_dict_strictly(model, converted.state_dict, 'layout',
                             InLinePVT.family)


def test_pos_embed_of_another_grid_is_resized_at_conversion():
    model = random_model()
    state_dict = dict(model.state_dict())
    state_dict['pos_embed2'] = torch.randn(1, 16 * 16, 32)
    converted = model.convert_official_state_dict(state_dict).state_dict
    expected = F.interpolate(
        state_dict['pos_embed2'].reshape(1, 16, 16, 32).permute(0, 3, 1, 2),
        size=(28, 28), mode='bilinear', align_corners=False)
    torch.testing.assert_close(
        converted['pos_embed2'],
        expected.permute(0, 2, 3, 1).reshape(1, 784, 32))


def test_bad_pretrain_img_size_is_rejected():
    with pytest.raises(ValueError, match='pretrain_img_size'):
        InLinePVT(arch=SMALL_ARCH, pretrain_img_size=(224, 224, 224))
    with pytest.raises(ValueError, match='smaller than 32'):
        InLinePVT(arch=SMALL_ARCH, pretrain_img_size=16)
