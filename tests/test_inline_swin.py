"""InLine-Swin specifics: official parity, shifted-window attention and its
relative position bias, patch merging, global InLine blocks, attn_types and
the official checkpoint layouts. The backbone contract shared with the
other families is tested in test_backbone_contract.py."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import InLineSwin
from mmdet_l2vit.checkpoint import (extract_state_dict,
                                    load_state_dict_strictly,
                                    read_checkpoint_file)
from mmdet_l2vit.models.backbones.inline_swin import (PatchMerging,
                                                      parse_attn_types)
from mmdet_l2vit.models.layers.inline_attention import InLineAttention
from mmdet_l2vit.models.layers.swin_window_attention import (
    SwinWindowAttention, relative_position_index,
    resize_relative_position_bias_table)

from conftest import expected_engine_calls

R1_ARCH = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
               window_size=56, attn_types='IIIS', mlp_ratio=4.)
TOLERANCE = 1e-5


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def ceil_sizes(h: int, w: int):
    sizes = [(math.ceil(h / 4), math.ceil(w / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2),
                      math.ceil(sizes[-1][1] / 2)))
    return sizes


def random_model(arch=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = InLineSwin(arch=arch or dict(R1_ARCH, depths=[1, 1, 2, 2],
                                         attn_types='IISS'), **kwargs)
    model.init_weights()
    return model.eval()


# ---------------------------------------------------------------- parity
@pytest.fixture(scope='module')
def r1(reference_file):
    path = str(reference_file('inline_swin_r1_cls.pth'))
    model = InLineSwin(arch=R1_ARCH, init_cfg=pretrained(path))
    model.init_weights()
    state_dict, _ = extract_state_dict(read_checkpoint_file(path))
    expected = torch.load(reference_file('inline_swin_r1_expected.pt'),
                          weights_only=True)
    return model.eval(), state_dict, expected


def test_stage_tokens_and_logits_match_official(r1):
    model, state_dict, expected = r1
    with torch.no_grad():
        stages = model.forward_stages(expected['input_224'])
        # The classification tail: norm -> mean -> head.
        pooled = F.layer_norm(stages[3], (128, ), state_dict['norm.weight'],
                              state_dict['norm.bias']).mean((1, 2))
        logits = F.linear(pooled, state_dict['head.weight'],
                          state_dict['head.bias'])
    for stage, ref in zip(stages, expected['stage_tokens_224']):
        assert max_abs_diff(stage.permute(0, 3, 1, 2), ref) <= TOLERANCE
    assert max_abs_diff(logits, expected['logits_224']) <= TOLERANCE


@pytest.mark.parametrize('inference', ['reference', 'auto'])
def test_outputs_match_official_stages_through_identity_norms(
        r1, inference, engine_calls):
    """The output norms start at identity affines: each output is the
    official stage map, layer-normalised; for the reference modules and the
    default (the CPU inference engine where it applies)."""
    model, _, expected = r1
    model.inference = inference
    with torch.no_grad():
        outs = model(expected['input_224'])
    assert len(engine_calls) == expected_engine_calls(inference)
    refs = expected['stage_tokens_224']
    assert len(outs) == len(refs) == 4
    for out, ref in zip(outs, refs):
        normed = F.layer_norm(ref.permute(0, 2, 3, 1), ref.shape[1:2])
        assert max_abs_diff(out, normed.permute(0, 3, 1, 2)) <= TOLERANCE


def test_checkpoint_report_and_values(r1, reference_file):
    model, state_dict, _ = r1
    converted = model.load_pretrained(
        str(reference_file('inline_swin_r1_cls.pth')))
    assert sorted(converted.dropped) == sorted([
        'layers.3.blocks.0.attn.relative_position_index',
        'layers.3.blocks.1.attn.relative_position_index', 'norm.weight',
        'norm.bias', 'head.weight', 'head.bias'
    ])
    assert converted.created == [
        f'norm{i}.{n}' for i in range(4) for n in ('weight', 'bias')
    ]
    for key, value in model.state_dict().items():
        if key in state_dict:
            assert torch.equal(value, state_dict[key]), key
        else:  # new output norms start at identity
            assert key.startswith('norm') and key[4].isdigit()
            assert torch.equal(value, torch.full_like(
                value, 1. if key.endswith('weight') else 0.))
    assert InLineSwin.infer_arch_from_state_dict(state_dict) == R1_ARCH
    # the official index, bit for bit
    assert torch.equal(
        state_dict['layers.3.blocks.0.attn.relative_position_index'],
        model.layers[3].blocks[0].attn.relative_position_index)
    assert all(m.eps == 1e-5 for m in model.modules()
               if isinstance(m, nn.LayerNorm))


def test_classification_model_is_reproduced_at_224(r1):
    """At 224 every InLine block is global and unshifted, and the stage-4
    softmax blocks are one unshifted 7x7 window (the official clamp)."""
    model = r1[0]
    kinds = [[type(b.attn).__name__ for b in stage.blocks]
             for stage in model.layers]
    assert kinds == [['InLineAttention'] * 2] * 3 + \
        [['SwinWindowAttention'] * 2]
    last = model.layers[3].blocks[1].attn
    assert last.shift_size == 3 and last.effective_shift(7, 7) == 0


# ------------------------------------------------------ window attention math
def window_oracle(attn: SwinWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Official-style Swin window attention in float64 with explicit loops:
    slice-built shift mask, per-pair bias lookup, softmax per window."""
    attn = copy.deepcopy(attn).double()
    x = x.double()
    B, H, W, C = x.shape
    ws, h = attn.window_size, attn.num_heads
    d = C // h
    shift = attn.shift_size if min(H, W) > ws else 0
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    labels = torch.zeros(Hp, Wp)
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
        count = 0
        for rows in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for cols in (slice(0, -ws), slice(-ws, -shift),
                         slice(-shift, None)):
                labels[rows, cols] = count
                count += 1
    table = attn.relative_position_bias_table
    out = torch.zeros_like(x)
    cells = [(i, j) for i in range(ws) for j in range(ws)]
    bias = torch.zeros(h, ws * ws, ws * ws, dtype=torch.float64)
    for a, (yi, xi) in enumerate(cells):
        for b, (yj, xj) in enumerate(cells):
            bias[:, a, b] = table[(yi - yj + ws - 1) * (2 * ws - 1) +
                                  (xi - xj + ws - 1)]
    for n in range(B):
        for top in range(0, Hp, ws):
            for left in range(0, Wp, ws):
                window = x[n, top:top + ws, left:left + ws].reshape(-1, C)
                lab = labels[top:top + ws, left:left + ws].reshape(-1)
                mask = (lab[:, None] != lab[None, :]).double() * -100.
                q, k, v = attn.qkv(window).reshape(-1, 3, h, d).unbind(1)
                logits = torch.einsum('nhd,mhd->hnm', q * d**-0.5, k)
                weights = torch.softmax(logits + bias + mask, dim=-1)
                result = torch.einsum('hnm,mhd->nhd', weights, v)
                out[n, top:top + ws,
                    left:left + ws] = attn.proj(result.reshape(-1, C)).view(
                        ws, ws, C)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return out[:, :H, :W]


@pytest.mark.parametrize('hw, shift', [((10, 17), 2), ((8, 8), 0),
                                       ((3, 9), 2), ((12, 12), 2)])
def test_window_attention_equals_official_style_loops(hw, shift):
    torch.manual_seed(0)
    attn = SwinWindowAttention(12, 3, window_size=4, shift_size=shift)
    nn.init.normal_(attn.relative_position_bias_table, std=1.)
    x = torch.randn(2, *hw, 12)
    with torch.no_grad():
        reference = window_oracle(attn, x)
        out = attn(x)
    if min(hw) <= 4:
        assert attn.effective_shift(*hw) == 0
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-5)


def test_relative_position_index_is_the_official_one():
    index = relative_position_index(3)
    assert index.shape == (9, 9) and index.dtype == torch.int64
    # token 0 is (0, 0), token 5 is (1, 2): offset (-1, -2) -> (1, 0)
    assert index[0, 5].item() == (0 - 1 + 2) * 5 + (0 - 2 + 2)
    assert index[5, 0].item() == (1 + 2) * 5 + (2 + 2)
    assert torch.equal(index.diagonal(), torch.full((9, ), 12))


def test_relative_position_table_resize():
    table = torch.randn(169, 4)
    resized = resize_relative_position_bias_table(table, 12)
    image = table.t().reshape(1, 4, 13, 13)
    expected = F.interpolate(image, size=(23, 23), mode='bicubic',
                             align_corners=False).reshape(4, -1).t()
    torch.testing.assert_close(resized, expected)
    assert resize_relative_position_bias_table(table, 7) is table
    # any load path resizes (load pre-hook), and drops a stored index
    attn = SwinWindowAttention(32, 4, window_size=12)
    source = SwinWindowAttention(32, 4, window_size=7).state_dict()
    source['relative_position_bias_table'] = table
    source['relative_position_index'] = relative_position_index(7)
    attn.load_state_dict(source, strict=True)
    torch.testing.assert_close(attn.relative_position_bias_table.data,
                               expected)


def test_patch_merging_pads_odd_maps_and_keeps_official_order():
    torch.manual_seed(0)
    merge = PatchMerging(3)
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(6, 12))
        merge.norm.weight.fill_(1.)
        merge.norm.bias.zero_()
        x = torch.randn(1, 5, 7, 3)
        out = merge(x)
        padded = merge(F.pad(x, (0, 0, 0, 1, 0, 1)))
    assert out.shape == (1, 3, 4, 6)
    torch.testing.assert_close(out, padded)
    # channels 0-2: (even row, even col); 3-5: (odd row, even col)
    cat = torch.cat([x[:, 0:1, 0:1], x[:, 1:2, 0:1]], dim=-1)
    full = torch.cat([cat, x[:, 0:1, 1:2], x[:, 1:2, 1:2]], dim=-1)
    torch.testing.assert_close(out[0, 0, 0],
                               F.layer_norm(full, (12, ))[0, 0, 0, :6])


def test_inline_blocks_are_global_over_the_unpadded_map():
    model = random_model()
    block = model.layers[0].blocks[0]
    assert isinstance(block.attn, InLineAttention)
    seen = []
    block.attn.register_forward_hook(
        lambda module, args, out: seen.append(tuple(args[0].shape)))
    model(torch.randn(1, 3, 97, 131))  # autograd path: calls the module
    assert seen == [(1, 25, 33, 16)]


def test_softmax_blocks_shift_by_the_official_rule():
    model = random_model(arch=dict(R1_ARCH, attn_types='IIMS1'))
    kinds = [[type(b.attn).__name__[0] for b in s.blocks]
             for s in model.layers]
    assert kinds == [['I', 'I'], ['I', 'I'], ['I', 'S'], ['S', 'S']]
    stage3 = model.layers[2].blocks[1].attn
    stage4 = [b.attn for b in model.layers[3].blocks]
    assert stage3.shift_size == 3 and stage4[0].shift_size == 0
    # at 224 (stage 3 is 14x14, stage 4 7x7) as the official model; at
    # detection sizes every odd softmax block shifts
    assert stage3.effective_shift(14, 14) == 3
    assert stage4[1].effective_shift(7, 7) == 0
    assert stage4[1].effective_shift(25, 38) == 3
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 300, 420))
    assert [tuple(o.shape[2:]) for o in outs] == ceil_sizes(300, 420)


# ------------------------------------------------------- attn_types, archs
@pytest.mark.parametrize('attn_types, depths, expected', [
    ('IIIS', [2, 2, 6, 2], [['I'] * 2, ['I'] * 2, ['I'] * 6, ['S'] * 2]),
    ('IISS', [2, 2, 18, 2], [['I'] * 2, ['I'] * 2, ['S'] * 18, ['S'] * 2]),
    ('IIMS2', [2, 2, 18, 2],
     [['I'] * 2, ['I'] * 2, ['I'] * 2 + ['S'] * 16, ['S'] * 2]),
])
def test_attn_types_official_format(attn_types, depths, expected):
    assert parse_attn_types(attn_types, depths) == expected


@pytest.mark.parametrize('bad', ['IIS', 'IIXS', 'IIMS', 'IIIS2', 'IIMS9', 7])
def test_bad_attn_types_are_rejected(bad):
    with pytest.raises(ValueError, match='attn_types'):
        InLineSwin(arch=dict(R1_ARCH, attn_types=bad))


def test_named_archs():
    for name, dims, types in [('tiny', 96, 'IIIS'), ('small', 96, 'IISS'),
                              ('base', 128, 'IIMS2')]:
        with torch.device('meta'):
            model = InLineSwin(arch=name)
        assert model.embed_dims == [dims * 2**i for i in range(4)]
        assert model.arch_settings['attn_types'] == types
        assert model.softmax_window_size == 7
        head_dims = {
            model.embed_dims[i] // block.attn.num_heads
            for i, stage in enumerate(model.layers) for block in stage.blocks
        }
        assert head_dims == {32}


# ------------------------------------------------------ checkpoints, layouts
@pytest.mark.parametrize('name, arch', [('T', 'tiny'), ('S', 'small'),
                                        ('B', 'base')])
def test_full_size_official_layout_converts_exactly(reference_file, name,
                                                    arch):
    layouts = json.loads(reference_file('official_keys.json').read_text())
    official = layouts[f'InLine_Swin_{name}']['keys']
    state_dict = {
        key: torch.empty(shape, dtype=getattr(torch, dtype), device='meta')
        for key, shape, dtype in official
    }
    inferred = InLineSwin.infer_arch_from_state_dict(state_dict)
    assert inferred == dict(InLineSwin.arch_defaults,
                            **InLineSwin.arch_zoo[arch])
    with torch.device('meta'):
        model = InLineSwin(arch=arch)
    converted = model.convert_official_state_dict(state_dict)
    expected_dropped = [
        k for k, _, _ in official
        if k.startswith(('head.', 'norm.')) or k.endswith((
            '.relative_position_index', '.attn_mask'))
    ]
    assert converted.dropped == expected_dropped
    # Swin-S/B carry attn_mask buffers for their shifted stage-3 blocks
    masks = [k for k in expected_dropped if k.endswith('attn_mask')]
    assert len(masks) == {'T': 0, 'S': 9, 'B': 8}[name]
    assert converted.created == [
        f'norm{i}.{n}' for i in range(4) for n in ('weight', 'bias')
    ]
    own = model.state_dict()
    assert {k: v.shape for k, v in converted.state_dict.items()} == \
        {k: v.shape for k, v in own.items()}
    load_state_dict_strictly(model, converted.state_dict, 'layout',
                             InLineSwin.family)


def test_other_softmax_window_resizes_checkpoint_tables(reference_file):
    path = reference_file('inline_swin_r1_cls.pth')
    model = InLineSwin(arch=R1_ARCH, softmax_window_size=12,
                       init_cfg=pretrained(path))
    model.init_weights()
    official = read_checkpoint_file(str(path))['model']
    key = 'layers.3.blocks.0.attn.relative_position_bias_table'
    torch.testing.assert_close(
        model.state_dict()[key],
        resize_relative_position_bias_table(official[key], 12))
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 97, 131))
    assert [tuple(o.shape[2:]) for o in outs] == ceil_sizes(97, 131)


