"""The fused / memory-saving ops give the plain ops' values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit.models.layers.common import Mlp
from mmdet_l2vit.models.layers.fused import conv2d_gelu, linear


def _perturbed_norm(channels: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.add_(torch.randn(channels) * .2)
        norm.bias.add_(torch.randn(channels) * .2)
    return norm


@pytest.mark.parametrize('with_norm', [False, True])
@pytest.mark.parametrize('with_residual', [False, True])
def test_mlp_training_path_matches_plain_autograd(with_norm, with_residual):
    torch.manual_seed(0)
    mlp, norm = Mlp(16, 64), _perturbed_norm(16)
    x = torch.randn(2, 5, 7, 16, requires_grad=True)
    params = [x] + list(mlp.parameters()) + list(norm.parameters())

    def plain() -> torch.Tensor:
        inp = norm(x) if with_norm else x
        out = mlp.fc2(F.gelu(mlp.fc1(inp)))
        return out + x if with_residual else out

    def ours() -> torch.Tensor:
        return mlp(x, residual=x if with_residual else None,
                   norm=norm if with_norm else None)

    grad_out = torch.randn(2, 5, 7, 16)
    results = []
    for fn in (plain, ours):
        out = fn()
        grads = torch.autograd.grad(out, params, grad_out, allow_unused=True)
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mlp_training_path_saves_less():
    """The normalised input and the GELU output are not kept for backward."""
    mlp, norm = Mlp(32, 128), nn.LayerNorm(32)
    x = torch.randn(1, 64, 64, 32, requires_grad=True)

    def saved_bytes(fn) -> int:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = \
                t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(storages.values())

    plain = saved_bytes(lambda: mlp.fc2(F.gelu(mlp.fc1(norm(x)))))
    ours = saved_bytes(lambda: mlp(x, norm=norm))
    activation = x.numel() * 4
    # plain: x, normed, 4x hidden, 4x gelu out (+weights); ours: x, 4x hidden
    assert plain - ours >= 5 * activation


def test_onednn_inference_path_matches_plain_ops():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x, residual = torch.randn(2, 9, 11, 24), torch.randn(2, 9, 11, 40)
    conv = nn.Conv2d(24, 24, 7, padding=3, groups=24)
    image = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, layer), layer(x))
        torch.testing.assert_close(linear(x, layer, gelu=True),
                                   F.gelu(layer(x)))
        torch.testing.assert_close(linear(x, layer, residual=residual),
                                   layer(x) + residual)
        torch.testing.assert_close(conv2d_gelu(image, conv),
                                   F.gelu(conv(image)), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize('attention', ['window', 'linear'])
def test_attention_with_recomputed_norm_matches_plain_autograd(attention):
    """Training path (LayerNorm recomputed, windows padded with the qkv bias)
    against norm -> zero-pad -> project, on a map that needs padding."""
    from mmdet_l2vit.models.layers.linear_attention import LinearAttention
    from mmdet_l2vit.models.layers.window_attention import WindowAttention
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, 4) if attention == 'window' else \
        LinearAttention(16, 2)
    norm = _perturbed_norm(16)
    x = torch.randn(2, 9, 11, 16, requires_grad=True)
    params = [x] + list(attn.parameters()) + list(norm.parameters())
    grad_out = torch.randn(2, 9, 11, 16)
    results = []
    for out in (attn(norm(x)), attn(x, norm=norm)):
        results.append((out.detach(),
                        torch.autograd.grad(out, params, grad_out)))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
