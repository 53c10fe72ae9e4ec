"""InLine-PVT: official parity, the InLine attention math, dense behaviour,
the backbone contract, checkpoints and bad inputs."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import InLinePVT
from mmdet_l2vit.checkpoint import (CheckpointError, extract_state_dict,
                                    load_state_dict_strictly,
                                    read_checkpoint_file)
from mmdet_l2vit.models.layers.inline_attention import (KERNEL_FUNCS,
                                                        InLineAttention)

from conftest import require_toolbox

R1_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
               num_heads=[1, 2, 4, 8], mlp_ratios=[8, 8, 4, 4])
SMALL_ARCH = dict(R1_ARCH, depths=[1, 1, 1, 1])
TOLERANCE = 1e-5


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def floor_sizes(h: int, w: int):
    sizes = [(h // 4, w // 4)]
    for _ in range(3):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


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


@pytest.mark.parametrize('size', ['224', '120x152'])
def test_stage_tokens_and_logits_match_official(r1, size):
    model, state_dict, expected = r1
    with torch.no_grad():
        stages = model.forward_stages(expected[f'input_{size}'])
        # The classification tail: mean over stage-4 tokens -> head (no
        # final norm in InLine-PVT).
        logits = F.linear(stages[3].mean((1, 2)), state_dict['head.weight'],
                          state_dict['head.bias'])
        outs = model(expected[f'input_{size}'])
    for stage, out, ref in zip(stages, outs,
                               expected[f'stage_tokens_{size}']):
        assert max_abs_diff(stage.permute(0, 3, 1, 2), ref) <= TOLERANCE
        # No output norms by default: outputs are the raw stage maps.
        assert torch.equal(out, stage.permute(0, 3, 1, 2))
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
    float64, written independently of the implementation."""
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
    image = v.transpose(1, 2).reshape(1, B * C, H, W)
    local = F.conv2d(image, kernels.reshape(B * C, 1, 3, 3), padding=1,
                     groups=B * C)
    local = local.reshape(B, C, N).transpose(1, 2)
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


def test_training_norm_recomputation_matches_plain_autograd():
    """In training the attention takes its LayerNorm (recomputed in
    backward, with the token mean for the kernel predictor): same values
    and gradients as norm-then-attention, for both projection layouts."""
    from mmdet_l2vit.models.layers.inline_attention import _NormProjectMean
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 6, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(6, dtype=torch.float64, requires_grad=True),
              torch.randn(6, dtype=torch.float64, requires_grad=True), 1e-6,
              torch.randn(9, 6, dtype=torch.float64, requires_grad=True),
              torch.randn(9, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(
        lambda *a: _NormProjectMean.apply(a[0].reshape(2, 12, 6), *a[1:]),
        [x] + params)
    for layout, kernel_func in [('q_kv', 'identity'), ('qkv', 'exp')]:
        torch.manual_seed(0)
        attn = InLineAttention(32, 4, qkv_layout=layout,
                               kernel_func=kernel_func)
        norm = nn.LayerNorm(32)
        for module in (attn, norm):
            for param in module.parameters():
                nn.init.normal_(param, std=0.3)
        results = []
        for fused in (True, False):
            torch.manual_seed(1)
            x = torch.randn(2, 5, 7, 32, requires_grad=True)
            attn.zero_grad()
            norm.zero_grad()
            out = attn(x, norm=norm) if fused else attn(norm(x))
            (out * torch.linspace(-1, 1, 32)).sum().backward()
            results.append([out.detach(), x.grad] + [
                p.grad.clone()
                for p in list(attn.parameters()) + list(norm.parameters())
            ])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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
    from mmdet_l2vit.models.layers import inline_attention
    torch.manual_seed(0)
    attn = InLineAttention(16, 2, qkv_layout='q_kv').eval()
    x = torch.randn(1, 200, 304, 16) * 4
    seen = []
    plain_linear = inline_attention.linear

    def recording_linear(inputs, layer, **kwargs):
        if layer is attn.proj:
            seen.append(inputs.dtype)
        return plain_linear(inputs, layer, **kwargs)

    monkeypatch.setattr(inline_attention, 'linear', recording_linear)
    with torch.no_grad():
        reference = attn(x)
        # K^T V summed over 60800 tokens exceeds the fp16 range
        kv = attn.kv(x).flatten(1, 2)
        assert (kv[..., :16].transpose(1, 2) @ kv[..., 16:]).abs().max() > \
            65504
        with torch.autocast('cpu', dtype=torch.float16):
            half = attn(x)
    assert seen == [torch.float32, torch.float16]
    assert torch.isfinite(half).all()
    error = (half.float() - reference).norm() / reference.norm()
    assert error < 1e-2, error


# ---------------------------------------------------------- dense behaviour
@pytest.mark.parametrize('hw', [(33, 33), (97, 131), (800, 1216), (32, 45)])
def test_output_shapes_follow_floor_rule(hw):
    model = random_model()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert isinstance(outs, tuple) and len(outs) == 4
    for out, dims, size in zip(outs, SMALL_ARCH['embed_dims'],
                               floor_sizes(*hw)):
        assert out.shape == (1, dims, *size)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()


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


def test_inputs_below_stride_32_are_rejected():
    model = random_model()
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, 31, 64))


@pytest.mark.parametrize('kernel_func, batch, hw', [
    ('identity', 1, (97, 131)), ('identity', 2, (64, 96)),
    ('exp', 2, (70, 64))])
def test_chunked_inference_equals_autograd_path(small_chunks, kernel_func,
                                                batch, hw):
    """CPU inference runs each block token-chunked with fused epilogues;
    it must equal the plain (autograd) evaluation."""
    small_chunks(100)
    model = random_model(kernel_func=kernel_func, out_norms=True)
    x = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        fast = model(x)
    plain = model(x)  # grad enabled: the plain, differentiable path
    for a, b in zip(fast, plain):
        assert a.is_contiguous() and a.shape == b.shape
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-5)


def test_bf16_autocast_is_finite_and_close():
    model = random_model()
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for ref, out in zip(reference, low):
        assert torch.isfinite(out).all()
        error = (out.float() - ref).norm() / ref.norm()
        assert error < 0.05, error


# ---------------------------------------------------------------- contract
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


@pytest.mark.parametrize('frozen_stages', [0, 1, 4])
def test_frozen_stages_include_position_embeddings(frozen_stages):
    model = InLinePVT(arch=SMALL_ARCH, frozen_stages=frozen_stages,
                      out_norms=True)
    model.train()
    frozen = ['patch_embed1.', 'pos_embed1']
    for i in range(frozen_stages):
        frozen += [f'block{i + 1}.', f'norm{i}.']
        if i > 0:
            frozen += [f'patch_embed{i + 1}.', f'pos_embed{i + 1}']
    for name, param in model.named_parameters():
        assert param.requires_grad != any(
            name.startswith(p) for p in frozen), name
    assert model.block1.training == (frozen_stages < 1)
    assert not model.patch_embed1.training


def test_inference_block_leaves_its_input_alone():
    """A block called on its own returns a new tensor in inference too (the
    backbone lets its blocks write over their input, nobody else does)."""
    model = random_model()
    block = model.block2[0]
    x = torch.randn(2, 9, 11, block.norm1.normalized_shape[0])
    before = x.clone()
    with torch.no_grad():
        out = block(x)
    assert out.data_ptr() != x.data_ptr() and torch.equal(x, before)
    torch.testing.assert_close(out, block(x).detach(), rtol=0, atol=1e-5)


def test_compile_option_traces_the_whole_backbone():
    """``compile`` wraps the backbone in torch.compile; ``fullgraph=True``
    proves dynamo captures the (plain) path without graph breaks (the eager
    backend keeps the test fast; inductor is exercised by
    tools/benchmark.py --compile)."""
    eager = random_model()
    compiled = random_model(compile=dict(backend='eager', fullgraph=True))
    x = torch.randn(2, 3, 77, 101)
    with torch.no_grad():
        for a, b in zip(eager(x), compiled(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_drop_path_schedule_and_with_cp():
    torch.manual_seed(0)
    plain = InLinePVT(arch=R1_ARCH, drop_path_rate=0.3)
    plain.init_weights()
    blocks = [b for i in range(1, 5) for b in getattr(plain, f'block{i}')]
    rates = [0. if isinstance(b.drop_path, nn.Identity) else
             b.drop_path.drop_prob for b in blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 8).tolist())
    ckpt = InLinePVT(arch=R1_ARCH, drop_path_rate=0.3, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(1)
        outs = model(x)
        sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5,
                                   atol=1e-6, msg=name)


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


@pytest.mark.parametrize('arch, match', [
    ('huge', 'unknown arch'),
    (dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
          num_heads=[1, 2, 4, 8]), 'malformed'),
    (dict(R1_ARCH, embed_dims=[16, 32, 64]), 'must be 4 positive ints'),
    (dict(R1_ARCH, num_heads=[3, 2, 4, 8]), 'not divisible'),
    (dict(R1_ARCH, mlp_ratios=[8, 8, 0, 4]), 'mlp_ratios'),
    (dict(R1_ARCH, attn_types='IIII'), 'unknown keys'),
])
def test_bad_arch_is_rejected(arch, match):
    with pytest.raises(ValueError, match=match):
        InLinePVT(arch=arch)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match='kernel_func'):
        InLinePVT(arch=SMALL_ARCH, kernel_func='softmax')
    with pytest.raises(AssertionError):
        InLinePVT(arch=SMALL_ARCH, pretrain_img_size=(224, 224, 224))
    with pytest.raises(ValueError, match='out_indices'):
        InLinePVT(arch=SMALL_ARCH, out_indices=(4, ))


def test_pretrained_argument_rules():
    with pytest.raises(TypeError, match='pretrained must be a str'):
        InLinePVT(arch=SMALL_ARCH, pretrained=123)
    with pytest.raises(AssertionError, match='cannot be set at the same'):
        InLinePVT(arch=SMALL_ARCH, pretrained='a.pth',
                  init_cfg=pretrained('a.pth'))
    with pytest.warns(DeprecationWarning):
        model = InLinePVT(arch=SMALL_ARCH, pretrained='a.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='a.pth')


def test_missing_truncated_and_corrupt_checkpoints(tmp_path, reference_file):
    model = InLinePVT(arch=R1_ARCH, init_cfg=pretrained(tmp_path / 'no.pth'))
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        model.init_weights()
    data = reference_file('inline_pvt_r1_cls.pth').read_bytes()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match='truncated, corrupt'):
        InLinePVT(arch=R1_ARCH, init_cfg=pretrained(truncated)).init_weights()
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'\x00' * 1000)
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        InLinePVT(arch=R1_ARCH, init_cfg=pretrained(corrupt)).init_weights()


@pytest.mark.parametrize('other, family', [
    ('inline_swin_r1_cls.pth', 'InLineSwin'),
    ('l2vit_r1_cls.pth', 'L2ViT'),
])
def test_checkpoint_of_another_model_is_refused(reference_file, other,
                                                family):
    model = InLinePVT(arch=R1_ARCH,
                      init_cfg=pretrained(reference_file(other)))
    with pytest.raises(CheckpointError,
                       match=f'looks like a {family} model, not InLinePVT'):
        model.init_weights()


def test_other_size_of_inline_pvt_is_refused_naming_shapes(reference_file):
    model = InLinePVT(arch='tiny', init_cfg=pretrained(
        reference_file('inline_pvt_r1_cls.pth')))
    with pytest.raises(CheckpointError, match='mis-shaped keys.*check `arch`'):
        model.init_weights()


def test_one_channel_image_is_rejected():
    model = random_model()
    with pytest.raises(ValueError, match=r'expects images of shape \(B, 3'):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_through_toolbox_registry(scope):
    require_toolbox(f'{scope}.models')
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(
        dict(type='InLinePVT', arch=SMALL_ARCH, out_indices=(1, 2, 3)))
    assert type(model) is InLinePVT
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [32, 64, 128]
    assert math.prod(outs[0].shape[2:]) == 8 * 12
