"""Training speed: L²ViT's ReLU linear attention as one autograd node.

Inside ``cpu_backward_routes`` the linear attention core
(``relu_linear_attention``) runs as ``ReluLinearAttention``: one node that
keeps only the qkv projection and the per-head ``d x d`` sums, with a
hand-written backward. Its output and gradients must be those of plain
autograd on the reference maths (to float32 rounding), with and without
the denominator floor and where the floor binds for some tokens only; it
must really run, and keep less for backward than plain autograd.
"""
from typing import Dict, Optional

import pytest
import torch

from mmdet_l2vit.models.layers.l2vit_attention import (LinearAttention,
                                                       relu_linear_attention)
from mmdet_l2vit.models.layers.memory import (ReluLinearAttention,
                                              cpu_backward_routes)

from test_training_speed_functions import (RTOL,  # noqa: E402
                                           _saved_bytes,
                                           assert_gradients_close,
                                           graph_nodes, relative_error)

#: Node type of ``ReluLinearAttention`` in the autograd graph.
NODE = 'ReluLinearAttentionBackward'


def qkv_and_temperature(batch: int, tokens: int, heads: int, head_dims: int,
                        dtype: torch.dtype = torch.float32, seed: int = 0):
    """A qkv projection ``(B, N, 3, heads, d)`` (a view of one ``(B, N, 3C)``
    map, as the module makes it) and a temperature, both leaves."""
    torch.manual_seed(seed)
    flat = torch.randn(batch, tokens, 3 * heads * head_dims, dtype=dtype)
    qkv = flat.view(batch, tokens, 3, heads, head_dims).requires_grad_()
    temperature = (torch.rand(heads, 1, 1, dtype=dtype) + .5).requires_grad_()
    return qkv, temperature


def floor_between(qkv: torch.Tensor) -> float:
    """A floor that binds for half of the tokens: midway between the two
    middle values of ``relu(q) . sum relu(k)`` (no token sits on it, where
    the gradient jumps)."""
    q, k = qkv.detach().clamp_min(0).unbind(2)[:2]
    z = torch.einsum('bnhd,bhd->bnh', q, k.sum(1)).flatten().sort().values
    middle = z.numel() // 2
    return (z[middle - 1] + z[middle]).item() / 2


def gradients(fn, qkv: torch.Tensor, temperature: torch.Tensor,
              floor: Optional[float], grad_out: torch.Tensor
              ) -> Dict[str, torch.Tensor]:
    out = fn(qkv, temperature, floor)
    grads = torch.autograd.grad(out, (qkv, temperature), grad_out)
    return dict(out=out.detach(), qkv=grads[0], temperature=grads[1])


@pytest.mark.parametrize('floor', ['official', 'binds-for-half', 'off'])
def test_function_gradients_are_exact(floor):
    """Float64 gradcheck, batch 2, odd token count and head dims (at this
    size the official floor binds for every token: z <= 92)."""
    qkv, temperature = qkv_and_temperature(2, 37, 2, 5, torch.float64)
    value = dict(official=100., off=None,
                 **{'binds-for-half': floor_between(qkv)})[floor]

    def fn(qkv, temperature):
        return ReluLinearAttention.apply(qkv, temperature, value)

    assert torch.autograd.gradcheck(fn, (qkv, temperature))


class _NoFloorMask(ReluLinearAttention):
    """A deliberately wrong gradient: backward as if there were no floor
    (denominator ``z + eps`` for every token, its gradient flowing where
    the floor binds)."""

    @staticmethod
    def forward(ctx, qkv, temperature, floor):
        out = ReluLinearAttention.forward(ctx, qkv, temperature, floor)
        ctx.denominator_floor = None
        return out


@pytest.mark.parametrize('floor', [100., None], ids=['official', 'off'])
def test_function_equals_plain_autograd_and_a_wrong_one_fails(floor):
    """Float32, batch 2, 3 heads of 32 over 1001 tokens, scaled so that the
    official floor binds for half of them: the output and gradients within
    RTOL of plain autograd on the reference maths; a gradient that ignores
    the floor is caught."""
    qkv, temperature = qkv_and_temperature(2, 1001, 3, 32)
    qkv.data.mul_((100. / floor_between(qkv))**.5)  # z scales as qkv^2
    grad_out = torch.randn(2, 1001, 3, 32)
    plain = gradients(relu_linear_attention, qkv, temperature, floor,
                      grad_out)
    ours = gradients(ReluLinearAttention.apply, qkv, temperature, floor,
                     grad_out)
    assert relative_error(ours.pop('out'), plain.pop('out')) <= RTOL
    assert_gradients_close(ours, plain)
    if floor is not None:
        wrong = gradients(_NoFloorMask.apply, qkv, temperature, floor,
                          grad_out)
        wrong.pop('out')
        with pytest.raises(AssertionError, match='qkv'):
            assert_gradients_close(wrong, plain)


@pytest.mark.parametrize('floor', [100., None])
def test_module_calls_are_routed(floor):
    torch.manual_seed(0)
    attn = LinearAttention(48, 3, denominator_floor=floor)
    x = torch.randn(2, 7, 9, 48, requires_grad=True)
    plain = attn(x)
    with cpu_backward_routes():
        routed = attn(x)
    assert NODE in {type(n).__name__ for n in graph_nodes((routed, ))}
    assert relative_error(routed, plain) <= RTOL


@pytest.mark.parametrize('call', ['no-grad', 'without-grad', 'bfloat16',
                                  'autocast'])
def test_other_calls_run_the_reference(call):
    qkv, temperature = qkv_and_temperature(1, 10, 2, 4)
    with cpu_backward_routes():
        if call == 'no-grad':
            with torch.no_grad():
                out = relu_linear_attention(qkv, temperature, 100.)
        elif call == 'without-grad':
            out = relu_linear_attention(qkv.detach(), temperature.detach(),
                                        100.)
        elif call == 'bfloat16':
            out = relu_linear_attention(qkv.bfloat16(),
                                        temperature.bfloat16(), 100.)
        else:
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = relu_linear_attention(qkv, temperature, 100.)
    assert out.grad_fn is None or type(out.grad_fn).__name__ != NODE
    assert out.shape == (1, 10, 2, 4) and out.dtype == torch.float32


def test_keeps_less_than_plain_autograd():
    """Plain autograd keeps relu(Q), relu(K), a copy of V and the
    numerator; the Function the qkv map (3 of those maps' size) and the
    small sums."""
    torch.manual_seed(0)
    attn = LinearAttention(64, 2)
    x = torch.randn(1, 40, 40, 64, requires_grad=True)

    def step():
        return attn(x)

    map_bytes = 40 * 40 * 64 * 4
    plain = _saved_bytes(step)
    with cpu_backward_routes():
        ours = _saved_bytes(step)
    assert ours <= plain - map_bytes, (ours, plain)
