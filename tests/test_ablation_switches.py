"""The papers' ablations as backbone switches.

L2ViT: ``lcm_kernel_size``, ``block_pattern``, ``softmax_stages``,
``denominator_floor``; InLine (PVT and Swin): ``injective``,
``local_residual`` (``kernel_func`` is tested in the family files). The
defaults are the official models (the parity tests hold them to the
reference outputs); here each switch is checked for the change it must make
and nothing more: the parameters it removes or reshapes, the maths it
swaps in (against an explicit formula or an equivalent default model),
gradients, the CPU inference engine stepping aside, and checkpoints of
another setting refused with the switch named.
"""
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.checkpoint import CheckpointError
from mmdet_l2vit.models.layers.inline_attention import InLineAttention
from mmdet_l2vit.models.layers.l2vit_attention import (LinearAttention,
                                                       SoftmaxGlobalAttention)
from mmdet_l2vit.models.layers.l2vit_blocks import LGABlock, LWABlock

L2VIT_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8])
PVT_ARCH = dict(L2VIT_ARCH, depths=[1, 1, 1, 1], mlp_ratios=[4, 4, 4, 4])
SWIN_ARCH = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                 attn_types='MSIS1')
ARCHS = {L2ViT: L2VIT_ARCH, InLinePVT: PVT_ARCH, InLineSwin: SWIN_ARCH}

#: (class, switches, fragments of the parameter names they remove, the
#: names they add, the names whose shapes change).
SWITCHES = [
    (L2ViT, dict(lcm_kernel_size=0), ['local_mp.', 'norm3.'], [], []),
    (L2ViT, dict(lcm_kernel_size=3), [], [], ['local_mp.conv']),
    (L2ViT, dict(lcm_kernel_size=5), [], [], ['local_mp.conv']),
    (L2ViT, dict(block_pattern='local'), ['.1.'], ['.1.'], []),
    (L2ViT, dict(block_pattern='global'), ['.0.'], ['.0.'], []),
    (L2ViT, dict(softmax_stages=(2, 3)),
     ['stages.2.1.attn.temperature', 'stages.3.1.attn.temperature'], [], []),
    (L2ViT, dict(denominator_floor=None), [], [], []),
    (InLinePVT, dict(injective=False, kernel_func='relu'), [], [], []),
    (InLinePVT, dict(local_residual=False), ['attn.residual.'], [], []),
    (InLineSwin, dict(injective=False, kernel_func='relu'), [], [], []),
    (InLineSwin, dict(local_residual=False), ['attn.residual.'], [], []),
]
SWITCH_IDS = [
    f'{cls.__name__}-' + '-'.join(f'{k}={v}' for k, v in kw.items())
    for cls, kw, *_ in SWITCHES
]


def build(cls: type, seed: int = 0, **switches: Any) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(arch=ARCHS[cls], drop_path_rate=0., **switches)
    model.init_weights()
    return model.eval()


def shapes(model: nn.Module) -> Dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize('cls,switches,removed,added,reshaped', SWITCHES,
                         ids=SWITCH_IDS)
def test_a_switch_changes_only_its_parameters(cls, switches, removed, added,
                                              reshaped):
    official, ablated = shapes(build(cls)), shapes(build(cls, **switches))
    gone = set(official) - set(ablated)
    new = set(ablated) - set(official)
    changed = {k for k in set(official) & set(ablated)
               if official[k] != ablated[k]}
    for keys, fragments in ((gone, removed), (new, added),
                            (changed, reshaped)):
        assert all(any(f in k for f in fragments) for k in keys), keys
        assert all(any(f in k for k in keys) for f in fragments), fragments


@pytest.mark.parametrize('cls,switches', [s[:2] for s in SWITCHES],
                         ids=SWITCH_IDS)
def test_a_switched_backbone_trains_and_steps_out_of_the_engine(
        cls, switches, engine_calls):
    model = build(cls, **switches).train()
    x = torch.randn(2, 3, 67, 45, requires_grad=True)
    outs = model(x)
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128]
    sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
    assert x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), \
            name
    model.eval()
    blocks_run = []
    hook = model.stage(0).register_forward_hook(
        lambda *_: blocks_run.append(1))
    with torch.no_grad():
        model(x.detach())
    hook.remove()
    # the engine computes the official models only: here the reference ran
    assert engine_calls == [] and blocks_run == [1]
    assert not model.has_official_switches()


def test_official_switches_run_in_the_engine(engine_calls):
    from conftest import expected_engine_calls
    with torch.no_grad():
        for cls in ARCHS:
            build(cls)(torch.randn(1, 3, 64, 64))
    assert len(engine_calls) == 3 * expected_engine_calls('auto')


def _transfer(source: nn.Module, target: nn.Module) -> None:
    """Copy every tensor of the target's shape from the source."""
    own = target.state_dict()
    target.load_state_dict(
        {k: v for k, v in source.state_dict().items()
         if k in own and own[k].shape == v.shape}, strict=False)


def test_lcm_kernel_size_0_is_a_zero_lcm_branch():
    official, ablated = build(L2ViT), build(L2ViT, lcm_kernel_size=0)
    for block in official.modules():
        if isinstance(block, LGABlock):
            nn.init.zeros_(block.local_mp.conv2.weight)
            nn.init.zeros_(block.local_mp.conv2.bias)
    _transfer(official, ablated)
    x = torch.randn(1, 3, 71, 53)
    for a, b in zip(official(x), ablated(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lcm_kernel_size_3_is_a_7x7_lcm_with_a_3x3_core():
    official, ablated = build(L2ViT), build(L2ViT, lcm_kernel_size=3, seed=1)
    small = ablated.state_dict()
    for name, param in official.named_parameters():
        if 'local_mp.conv' in name and name.endswith('weight'):
            param.data.zero_()
            param.data[..., 2:5, 2:5] = small[name]
    _transfer(ablated, official)
    x = torch.randn(1, 3, 71, 53)
    for a, b in zip(official(x), ablated(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('pattern,kinds', [('alternating', [LWABlock,
                                                            LGABlock]),
                                           ('local', [LWABlock, LWABlock]),
                                           ('global', [LGABlock, LGABlock])])
def test_block_pattern_sets_the_kind_of_every_block(pattern, kinds):
    model = build(L2ViT, block_pattern=pattern)
    for stage in model.stages:
        assert [type(b) for b in stage] == kinds


def _explicit_attention(x: torch.Tensor, attn: nn.Module, weights
                        ) -> torch.Tensor:
    """``proj(W @ V)`` per head from explicit (B, heads, N, N) weights."""
    B, H, W, C = x.shape
    qkv = attn.qkv(x).view(B, H * W, 3, attn.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = weights(q, k) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, H, W, C))


def test_softmax_stages_use_softmax_over_all_tokens():
    model = build(L2ViT, softmax_stages=(3, ))
    attn = model.stages[3][1].attn
    assert isinstance(attn, SoftmaxGlobalAttention)
    assert isinstance(model.stages[2][1].attn, LinearAttention)
    x = torch.randn(2, 5, 6, 128)
    scale = (128 // 8)**-0.5
    expected = _explicit_attention(
        x, attn, lambda q, k: (q @ k.transpose(-2, -1) * scale).softmax(-1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('floor', [100.0, None])
def test_denominator_floor_on_and_off(floor):
    attn = LinearAttention(32, 2, denominator_floor=floor)
    nn.init.uniform_(attn.temperature, 0.5, 1.5)
    x = torch.randn(2, 7, 9, 32)

    def weights(q, k):
        scores = F.relu(q) @ F.relu(k).transpose(-2, -1)
        total = scores.sum(-1, keepdim=True)
        denominator = total + 1e-6 if floor is None else total.clamp(
            min=floor)
        return scores * attn.temperature / denominator

    torch.testing.assert_close(attn(x), _explicit_attention(x, attn, weights),
                               rtol=1e-5, atol=1e-5)


def test_without_the_floor_rows_sum_to_the_temperature():
    attn = LinearAttention(16, 2, denominator_floor=None)
    nn.init.constant_(attn.temperature[0], 0.25)
    nn.init.constant_(attn.temperature[1], 2.0)
    attn.proj = nn.Identity()
    with torch.no_grad():  # V = 1 everywhere: the output is the row sums
        attn.qkv.weight[32:].zero_()
        attn.qkv.bias[32:].fill_(1.)
    out = attn(torch.randn(1, 6, 5, 16))
    torch.testing.assert_close(out[..., :8], torch.full_like(out[..., :8],
                                                             0.25))
    torch.testing.assert_close(out[..., 8:], torch.full_like(out[..., 8:],
                                                             2.0))
    attn.denominator_floor = 100.0  # 30 tokens: the floor holds them down
    assert attn(torch.randn(1, 6, 5, 16))[..., 8:].max() < 2.0


@pytest.mark.parametrize('layout', ['qkv', 'q_kv'])
def test_injective_false_is_division_normalised_linear_attention(layout):
    attn = InLineAttention(32, 2, qkv_layout=layout, kernel_func='relu',
                           injective=False, local_residual=False)
    x = torch.randn(2, 6, 7, 32)
    B, H, W, C = x.shape
    q, k, v = (t.reshape(B, H * W, 2, 16).transpose(1, 2)
               for t in attn.project_qkv(x))
    scores = q @ k.transpose(-2, -1)
    out = scores / (scores.sum(-1, keepdim=True) + 1e-6) @ v
    expected = attn.proj(out.transpose(1, 2).reshape(B, H, W, C))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cls', [InLinePVT, InLineSwin])
def test_local_residual_false_is_a_zero_local_term(cls):
    official, ablated = build(cls), build(cls, local_residual=False)
    for module in official.modules():
        if isinstance(module, InLineAttention):
            nn.init.zeros_(module.residual[2].weight)
            nn.init.zeros_(module.residual[2].bias)
    _transfer(official, ablated)
    x = torch.randn(1, 3, 64, 72)
    for a, b in zip(official(x), ablated(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('cls,switches', [
    (L2ViT, dict(lcm_kernel_size=3)),
    (L2ViT, dict(lcm_kernel_size=0)),
    (L2ViT, dict(block_pattern='local')),
    (L2ViT, dict(softmax_stages=(3, ))),
    (InLinePVT, dict(local_residual=False)),
    (InLineSwin, dict(local_residual=False)),
])
def test_checkpoints_load_only_into_their_own_setting(cls, switches,
                                                      tmp_path):
    path = tmp_path / 'ablated.pth'
    torch.save(dict(model=build(cls, **switches).state_dict()), path)
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    same = cls(arch=ARCHS[cls], init_cfg=init_cfg, **switches)
    same.init_weights()  # loads strictly
    official = cls(arch=ARCHS[cls], init_cfg=init_cfg)
    with pytest.raises(CheckpointError) as error:
        official.init_weights()
    message = str(error.value)
    assert str(path) in message
    for name, value in switches.items():
        assert f'{name}={value!r}' in message


def test_bad_switch_values_are_refused():
    for switches, message in [(dict(lcm_kernel_size=4), 'lcm_kernel_size'),
                              (dict(block_pattern='LGLG'), 'block_pattern'),
                              (dict(softmax_stages=(4, )), 'softmax_stages'),
                              (dict(denominator_floor=0.), 'floor')]:
        with pytest.raises(ValueError, match=message):
            L2ViT(arch=L2VIT_ARCH, **switches)
