"""L²ViT specifics: named archs and head dims, the L/G block order, where
its BatchNorm layers are, the window and linear attention, and fp32
linear-attention reductions under fp16 autocast. The backbone contract
shared with the InLine models is tested in test_backbone_contract.py."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import L2ViT
from mmdet_l2vit.models.layers.l2vit_attention import (DENOMINATOR_FLOOR,
                                                       LinearAttention,
                                                       WindowAttention)
from mmdet_l2vit.models.layers.l2vit_blocks import LGABlock, LWABlock

SMALL_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8])


def test_named_archs_and_head_dims():
    with torch.device('meta'):
        tiny = L2ViT(arch='tiny')
        base384 = L2ViT(arch='base-384', out_indices=(3, ))
    assert [s[1].attn.num_heads for s in tiny.stages] == [3, 6, 12, 24]
    assert tiny.window_size == 7
    assert base384.window_size == 12
    assert [len(s) for s in tiny.stages] == [2, 2, 6, 2]
    # head dim 24 (not 32): derived from embed_dims / num_heads
    model = L2ViT(arch=dict(embed_dims=[48, 96, 192, 384],
                            depths=[1, 2, 1, 2], num_heads=[2, 4, 8, 16],
                            window_size=5))
    model.init_weights()
    assert model.stages[1][1].attn.temperature.flatten().tolist() == \
        pytest.approx([24**-0.5] * 4)
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 80))
    assert [o.shape[1] for o in outs] == [48, 96, 192, 384]


def test_blocks_alternate_local_and_global():
    model = L2ViT(arch=dict(SMALL_ARCH, depths=[2, 2, 5, 2]))
    kinds = [[type(b) for b in stage] for stage in model.stages]
    assert kinds == [[LWABlock, LGABlock]] * 2 + \
        [[LWABlock, LGABlock] * 2 + [LWABlock]] + [[LWABlock, LGABlock]]
    assert all(b.attn.window_size == 7 for stage in model.stages
               for b in stage if isinstance(b, LWABlock))


def test_batchnorms_are_in_the_stem_and_the_lcms():
    model = L2ViT(arch=SMALL_ARCH)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.BatchNorm2d)]
    assert names == ['downsample_layers.0.proj.proj.1',
                     'downsample_layers.0.proj.proj.4'] + [
                         f'stages.{i}.1.local_mp.bn' for i in range(4)]


def window_oracle(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Official-style windows in float64: zero-pad the normalised map,
    explicit loops over windows, softmax, crop."""
    B, H, W, C = x.shape
    ws, h = attn.window_size, attn.num_heads
    d = C // h
    x = F.pad(x.double(), (0, 0, 0, -W % ws, 0, -H % ws))
    qkv_w, qkv_b = attn.qkv.weight.double(), attn.qkv.bias.double()
    out = torch.zeros_like(x)
    for n in range(B):
        for top in range(0, x.shape[1], ws):
            for left in range(0, x.shape[2], ws):
                tokens = x[n, top:top + ws, left:left + ws].reshape(-1, C)
                q, k, v = F.linear(tokens, qkv_w, qkv_b).reshape(
                    -1, 3, h, d).unbind(1)
                weights = torch.softmax(
                    torch.einsum('nhd,mhd->hnm', q * d**-0.5, k), dim=-1)
                result = torch.einsum('hnm,mhd->nhd', weights, v)
                out[n, top:top + ws, left:left + ws] = F.linear(
                    result.reshape(-1, C), attn.proj.weight.double(),
                    attn.proj.bias.double()).view(ws, ws, C)
    return out[:, :H, :W]


@pytest.mark.parametrize('hw', [(7, 7), (9, 11), (3, 5)])
def test_window_attention_pads_with_zero_tokens(hw):
    """The padding tokens take part as keys and values (no mask)."""
    torch.manual_seed(0)
    attn = WindowAttention(12, 3, window_size=4)
    nn.init.normal_(attn.qkv.bias, std=1.)
    x = torch.randn(2, *hw, 12)
    with torch.no_grad():
        out = attn(x)
    torch.testing.assert_close(out.double(), window_oracle(attn, x), rtol=0,
                               atol=1e-5)


def test_linear_attention_equals_the_official_formula():
    torch.manual_seed(0)
    attn = LinearAttention(16, 2)
    with torch.no_grad():
        attn.temperature.copy_(torch.tensor([.3, 2.]).view(2, 1, 1))
    for scale in (.05, 20.):  # below and above the denominator floor
        x = torch.randn(2, 6, 9, 16) * scale
        with torch.no_grad():
            out = attn(x)
            q, k, v = attn.qkv(x).double().reshape(2, 54, 3, 2, 8).permute(
                2, 0, 3, 1, 4)
            q, k = F.relu(q), F.relu(k)
            kv = k.transpose(-2, -1) @ v * attn.temperature.double()
            denominator = (q @ k.sum(-2, keepdim=True).transpose(-2, -1))
            expected = (q @ kv) / denominator.clamp(min=DENOMINATOR_FLOOR)
            expected = F.linear(
                expected.transpose(1, 2).reshape(2, 6, 9, 16),
                attn.proj.weight.double(), attn.proj.bias.double())
        torch.testing.assert_close(out.double(), expected, rtol=0,
                                   atol=1e-5)
        floored = (denominator < DENOMINATOR_FLOOR).float().mean()
        assert (floored == 1.) if scale < 1 else (floored < .5), floored


def test_linear_attention_does_not_overflow_under_fp16_autocast():
    """Sums over ~60k tokens exceed the fp16 range (65504): the reductions
    run in float32 while the projections run in half precision."""
    torch.manual_seed(0)
    attn = L2ViT(arch=SMALL_ARCH).eval().stages[0][1].attn
    x = torch.randn(1, 200, 304, 16) * 4
    seen = []
    for layer in (attn.qkv, attn.proj):
        layer.register_forward_hook(
            lambda module, args, out: seen.append(out.dtype))
    with torch.no_grad():
        reference = attn(x)
        k_sum = torch.relu(attn.qkv(x)[..., 16:32]).sum((0, 1, 2))
        assert k_sum.max() > 65504  # would overflow in fp16
        seen.clear()
        with torch.autocast('cpu', dtype=torch.float16):
            half = attn(x)
    assert seen == [torch.float16, torch.float16]
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    error = (half.float() - reference).norm() / reference.norm()
    assert error < 1e-2, error
