"""Training speed: the backward routes of the CPU.

Inside ``cpu_backward_routes`` (turned on by the backbones' forward on
the CPU whenever autograd records) stride-1 'same' depthwise ``F.conv2d``
calls with kernels of at least 5x5 (L²ViT's LCM) run as
``SameDepthwiseConv2d`` (gradients from forward convs), dense strided
convs (stems, downsampling, patch embeddings) as ``StridedConv2d`` (weight
gradient from banded GEMMs) and every MLP's ``fc2(gelu(h))`` as
``GeluLinear`` (backward in row chunks); L²ViT's linear attention runs as
``ReluLinearAttention`` (test_linear_attention_function.py). Their outputs
must be those of the plain ops, their gradients those of plain autograd (to
float32 rounding), they must really run, and they must keep no more for
backward than the plain ops do.
"""
import copy
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit.models.backbones import base
from mmdet_l2vit.models.layers import memory
from mmdet_l2vit.models.layers.l2vit_attention import LinearAttention
from mmdet_l2vit.models.layers.l2vit_blocks import LocalConcentration
from mmdet_l2vit.models.layers.common import Mlp
from mmdet_l2vit.models.layers.memory import (GeluLinear,
                                              SameDepthwiseConv2d,
                                              StridedConv2d,
                                              cpu_backward_routes,
                                              routes_backward_here,
                                              saves_memory_here)

# the small archs of the training-memory tests
from test_training_memory import (FAMILIES,  # noqa: E402
                                  training_step_peaks)

#: Largest relative difference (max |a - b| / max |b|) a gradient may have.
RTOL = 1e-5
#: Node type of ``SameDepthwiseConv2d`` in the autograd graph.
ROUTED_NODE = 'SameDepthwiseConv2dBackward'
#: Node type of ``GeluLinear``.
GELU_LINEAR_NODE = 'GeluLinearBackward'
#: Node type of ``StridedConv2d``.
STRIDED_NODE = 'StridedConv2dBackward'
#: Node type of ``ReluLinearAttention``.
LINEAR_ATTENTION_NODE = 'ReluLinearAttentionBackward'


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (the size of ``b`` sets the scale)."""
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return ((a - b).abs().max() / scale).item()


def assert_gradients_close(ours: Dict[str, torch.Tensor],
                           plain: Dict[str, torch.Tensor],
                           rtol: float = RTOL) -> None:
    """Every gradient in ``ours`` is within ``rtol`` of plain autograd's,
    relative to the largest plain value of that tensor."""
    assert ours.keys() == plain.keys()
    errors = {}
    for name, grad in plain.items():
        assert grad is not None and ours[name] is not None, name
        assert ours[name].shape == grad.shape, name
        errors[name] = relative_error(ours[name], grad)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, (worst, errors[worst])


def set_machinery(monkeypatch, enabled: bool) -> None:
    """Turn the backbones' recomputation and depthwise routing on or off."""
    monkeypatch.setattr(base, 'saves_memory_here',
                        saves_memory_here if enabled else lambda: False)
    monkeypatch.setattr(
        base, 'routes_backward_here',
        routes_backward_here if enabled else lambda x: False)


def perturbed(model: nn.Module) -> nn.Module:
    """Move norm affines, BatchNorm statistics and conv biases away from
    their initial values (zero biases hide a wrong bias gradient path)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(torch.randn_like(module.weight), alpha=.2)
                module.bias.add_(torch.randn_like(module.bias), alpha=.2)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0., .2)
                module.running_var.uniform_(.5, 2.)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0., .1)
    return model


def with_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """Training mode (drop path active) with every BatchNorm normalising
    by its running statistics.

    A training-mode BatchNorm makes the gradient of the conv bias before
    it a sum that cancels to (nearly) zero: float32 plain autograd is then
    itself up to ~2e-4 away from float64, and no two float32 summation
    orders agree to 1e-5. :func:`test_batch_statistics_gradients_are_as_exact`
    covers that case against float64.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def graph_nodes(outputs: Tuple[torch.Tensor, ...]) -> List[object]:
    """Every node of the autograd graph behind ``outputs``."""
    seen, stack = {}, [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return list(seen.values())


def is_routable_conv(node: object) -> bool:
    """Whether a node is a plain ``ConvolutionBackward0`` of a grouped
    stride-1 conv padded by 2 or more (in these backbones: a 'same'
    depthwise conv of 5x5 or more, one the routing should take). Read from
    the node's non-tensor attributes: reading its saved tensors would
    recompute checkpointed blocks."""
    return (type(node).__name__ == 'ConvolutionBackward0'
            and node._saved_groups > 1
            and tuple(node._saved_stride) == (1, 1)
            and tuple(node._saved_dilation) == (1, 1)
            and min(node._saved_padding) >= 2
            and not node._saved_transposed)


def is_strided_dense_conv(node: object) -> bool:
    """Whether a node is a plain ``ConvolutionBackward0`` of a dense conv
    with a stride above 1 (one :class:`StridedConv2d` should take)."""
    return (type(node).__name__ == 'ConvolutionBackward0'
            and node._saved_groups == 1
            and max(node._saved_stride) > 1
            and not node._saved_transposed)


def training_step(model: nn.Module, x: torch.Tensor, seed: int = 1):
    """Forward and backward of a weighted loss. Returns the outputs, the
    gradients (``'input'`` and every parameter), and the numbers of routed
    and of plain routable depthwise conv nodes in the graph, of routed
    depthwise conv nodes that ran backward, of ``GeluLinear``,
    ``StridedConv2d`` and ``ReluLinearAttention`` nodes that ran backward,
    and of plain strided dense conv nodes in the graph."""
    model.zero_grad(set_to_none=True)
    inputs = x.clone().requires_grad_()
    torch.manual_seed(seed)  # the same drop-path masks in every run
    outs = model(inputs)
    nodes = graph_nodes(outs)
    routed = [n for n in nodes if type(n).__name__ == ROUTED_NODE]
    plain = sum(map(is_routable_conv, nodes))
    plain_strided = sum(map(is_strided_dense_conv, nodes))
    ran, gelu_linear_ran, strided_ran, attention_ran = [], [], [], []
    for node in routed:
        node.register_hook(lambda grad_inputs, grad_outputs: ran.append(1))
    for node in nodes:
        spy = {GELU_LINEAR_NODE: gelu_linear_ran,
               STRIDED_NODE: strided_ran,
               LINEAR_ATTENTION_NODE: attention_ran}.get(type(node).__name__)
        if spy is not None:
            node.register_hook(
                lambda grad_inputs, grad_outputs, spy=spy: spy.append(1))
    sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads['input'] = inputs.grad
    return ([o.detach() for o in outs], grads,
            dict(routed=len(routed), plain=plain, ran=len(ran),
                 gelu_linear=len(gelu_linear_ran), strided=len(strided_ran),
                 linear_attention=len(attention_ran),
                 plain_strided=plain_strided))


# ------------------------------------------------------------ backbones
@pytest.mark.parametrize('with_cp', [False, True], ids=['plain', 'with_cp'])
@pytest.mark.parametrize('drop_path_rate', [0., .3], ids=['dp0', 'dp.3'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_gradients_equal_plain_autograd(name, drop_path_rate, with_cp,
                                        monkeypatch):
    cls, arch = FAMILIES[name]
    torch.manual_seed(0)
    model = cls(arch=arch, drop_path_rate=drop_path_rate, with_cp=with_cp)
    model.init_weights()
    with_batchnorm_statistics(perturbed(model))
    x = torch.randn(2, 3, 61, 45)
    set_machinery(monkeypatch, False)
    outs_plain, plain, nodes_plain = training_step(model, x)
    set_machinery(monkeypatch, True)
    outs, ours, nodes = training_step(model, x)
    # L2ViT: two 7x7 LCM convs per LGA block; the InLine families have
    # 3x3 depthwise convs only (their backward stays oneDNN's)
    expected = {'l2vit': 8, 'inline_pvt': 0, 'inline_swin': 0}[name]
    # strided dense convs: L2ViT's two stem convs and three downsampling
    # convs, InLine-PVT's four patch embeddings, InLine-Swin's one
    strided = {'l2vit': 5, 'inline_pvt': 4, 'inline_swin': 1}[name]
    mlps = sum(isinstance(m, Mlp) for m in model.modules())
    # L2ViT's linear attentions (one per LGA block)
    attentions = sum(isinstance(m, LinearAttention) for m in model.modules())
    assert attentions == {'l2vit': 4, 'inline_pvt': 0, 'inline_swin': 0}[name]
    assert nodes_plain == dict(routed=0, plain=expected, ran=0,
                               gelu_linear=0, strided=0, linear_attention=0,
                               plain_strided=strided)
    assert nodes == dict(routed=expected, plain=0, ran=expected,
                         gelu_linear=mlps, strided=strided,
                         linear_attention=attentions, plain_strided=0)
    for out, out_plain in zip(outs, outs_plain):
        torch.testing.assert_close(out, out_plain, rtol=0, atol=0)
    assert_gradients_close(ours, plain)


def test_batch_statistics_gradients_are_as_exact(monkeypatch):
    """L2ViT with training-mode BatchNorms (stem, LCM): each gradient is
    within RTOL of plain autograd's, except where float32 plain autograd is
    itself farther than RTOL from float64 (the LCM's conv1 bias); there
    ours is as close to float64 as plain autograd's, within a factor 3
    (measured: 0.4-1.7 over six seeds). Gradients that are zero in exact
    arithmetic (the stem conv biases) are float32 noise in both."""
    cls, arch = FAMILIES['l2vit']
    torch.manual_seed(0)
    model = cls(arch=arch, drop_path_rate=.1)
    model.init_weights()
    perturbed(model).train()
    x = torch.randn(2, 3, 61, 45)
    set_machinery(monkeypatch, False)
    _, plain, _ = training_step(model, x)
    _, exact, _ = training_step(copy.deepcopy(model).double(), x.double())
    set_machinery(monkeypatch, True)
    _, ours, nodes = training_step(model, x)
    assert nodes['ran'] == nodes['routed'] > 0 and nodes['strided'] == 5
    top = max(g.abs().max().item() for g in exact.values())
    cancelled = []
    for name, grad in exact.items():
        if grad.abs().max() <= 1e-9 * top:
            assert ours[name].abs().max() <= RTOL * top, name
            plain.pop(name), ours.pop(name)
        elif relative_error(plain[name].double(), grad) > RTOL:
            cancelled.append(name)
            assert relative_error(ours[name].double(), grad) <= 3 * \
                relative_error(plain[name].double(), grad), name
            plain.pop(name), ours.pop(name)
    assert cancelled and all(n.endswith('local_mp.conv1.bias')
                             for n in cancelled), cancelled
    assert_gradients_close(ours, plain)


def test_routing_is_chosen_by_device_and_autograd():
    x = torch.randn(1, 3, 8, 8)
    assert routes_backward_here(x)
    assert not routes_backward_here(x.to('meta'))
    with torch.no_grad():
        assert not routes_backward_here(x)


@pytest.mark.filterwarnings('ignore:`torch.jit.trace` is deprecated')
def test_no_routing_while_tracing():
    seen = []

    def fn(x):
        seen.append(routes_backward_here(x))
        return x * 2

    torch.jit.trace(fn, torch.randn(3), check_trace=False)
    assert seen == [False]


def test_backbone_forward_turns_the_routing_on(monkeypatch):
    cls, arch = FAMILIES['l2vit']
    model = cls(arch=arch, inference='reference').train()
    x = torch.randn(1, 3, 64, 64)
    outs = model(x)
    assert any(type(n).__name__ == ROUTED_NODE for n in graph_nodes(outs))
    monkeypatch.setattr(base, 'routes_backward_here',
                        lambda x: False)
    outs = model(x)
    assert not any(type(n).__name__ == ROUTED_NODE
                   for n in graph_nodes(outs))


# ------------------------------------------------------------ the Function
@pytest.mark.parametrize('shape, kernel', [
    ((2, 3, 7, 5), (3, 3)),
    ((1, 4, 6, 9), (7, 7)),
    ((2, 2, 5, 4), (5, 3)),
    ((1, 2, 3, 2), (7, 7)),  # kernel larger than the map
])
@pytest.mark.parametrize('bias', [True, False], ids=['bias', 'no-bias'])
@pytest.mark.parametrize('band_rows', [32, 2], ids=['one-band', 'bands'])
def test_function_gradients_are_exact(shape, kernel, bias, band_rows,
                                      monkeypatch):
    """Float64 gradcheck (and gradgradcheck: the backward is made of
    differentiable ops) with the weight gradient in one band or in bands
    of 2 rows (halo rows from the neighbours and zero padding)."""
    monkeypatch.setattr(memory, 'WEIGHT_GRAD_BAND_ROWS', band_rows)
    torch.manual_seed(0)
    channels = shape[1]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, 1, *kernel, dtype=torch.float64,
                         requires_grad=True)
    b = (torch.randn(channels, dtype=torch.float64, requires_grad=True)
         if bias else None)
    assert torch.autograd.gradcheck(SameDepthwiseConv2d.apply, (x, weight, b))
    assert torch.autograd.gradgradcheck(SameDepthwiseConv2d.apply,
                                        (x, weight, b))


# ----------------------------------------------------- GeluLinear
@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('bias', [True, False], ids=['bias', 'no-bias'])
@pytest.mark.parametrize('chunk_elements', [2**19, 20],
                         ids=['one-chunk', 'chunks'])
def test_gelu_linear_gradients_are_exact(approximate, bias, chunk_elements,
                                         monkeypatch):
    """Float64 gradcheck in one chunk and in chunks of 2 rows (and an odd
    last chunk: 7 rows of 10 hidden features)."""
    monkeypatch.setattr(memory, 'GELU_LINEAR_CHUNK_ELEMENTS', chunk_elements)
    torch.manual_seed(0)
    hidden = torch.randn(7, 10, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    b = (torch.randn(3, dtype=torch.float64, requires_grad=True)
         if bias else None)

    def fn(hidden, weight, b):
        activated = F.gelu(hidden, approximate=approximate).detach()
        return GeluLinear.apply(hidden, activated, weight, b, approximate)

    assert torch.autograd.gradcheck(fn, (hidden, weight, b))


@pytest.mark.parametrize('chunk_elements', [2**19, 96],
                         ids=['one-chunk', 'chunks'])
def test_mlp_equals_plain_autograd_and_a_wrong_one_fails(chunk_elements,
                                                         monkeypatch):
    """A float32 MLP on a (2, 5, 7, 8) map inside the routing: the same
    output, gradients within RTOL of plain autograd, the GeluLinear node
    ran; a backward that drops one chunk's weight gradient is caught."""
    monkeypatch.setattr(memory, 'GELU_LINEAR_CHUNK_ELEMENTS', chunk_elements)
    torch.manual_seed(0)
    mlp = Mlp(8, 24)
    x = torch.randn(2, 5, 7, 8)
    grad_out = torch.randn(2, 5, 7, 8)

    def run(routed: bool):
        mlp.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        with cpu_backward_routes(enabled=routed):
            out = mlp(inputs)
        nodes = [type(n).__name__ for n in graph_nodes((out, ))]
        out.backward(grad_out)
        grads = {n: p.grad.clone() for n, p in mlp.named_parameters()}
        grads['input'] = inputs.grad
        return out.detach(), grads, nodes.count(GELU_LINEAR_NODE)

    out_plain, plain, count_plain = run(False)
    out, ours, count = run(True)
    assert (count_plain, count) == (0, 1)
    torch.testing.assert_close(out, out_plain, rtol=0, atol=0)
    assert_gradients_close(ours, plain)

    addmm = torch.Tensor.addmm_
    calls = []

    def dropping_first_chunk(self, *args, **kwargs):
        calls.append(1)
        return self if len(calls) == 1 else addmm(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, 'addmm_', dropping_first_chunk)
    _, wrong, _ = run(True)
    with pytest.raises(AssertionError, match='fc2.weight'):
        assert_gradients_close(wrong, plain)


def test_gelu_linear_keeps_less_than_plain_autograd():
    """The routed MLP keeps what plain autograd keeps but the GELU output
    (which the backbones' recomputation turns into a recipe anyway)."""
    torch.manual_seed(0)
    mlp = Mlp(8, 32)
    x = torch.randn(1, 16, 16, 8, requires_grad=True)

    def step(routed: bool):
        with cpu_backward_routes(enabled=routed):
            return mlp(x)

    gelu_output_bytes = 16 * 16 * 32 * 4
    assert _saved_bytes(lambda: step(True)) == \
        _saved_bytes(lambda: step(False)) - gelu_output_bytes


def _conv_grads(conv_fn, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, grad_out: torch.Tensor
                ) -> Dict[str, torch.Tensor]:
    out = conv_fn(x, weight, bias)
    names = ('input', 'weight', 'bias')
    return dict(zip(names, torch.autograd.grad(out, (x, weight, bias),
                                               grad_out)))


def _plain_conv(x, weight, bias):
    return F.conv2d(x, weight, bias, 1, (weight.shape[-2] // 2,
                                         weight.shape[-1] // 2), 1,
                    weight.shape[0])


class _TransposedWeightGrad(SameDepthwiseConv2d):
    """A deliberately wrong gradient: the weight gradient's (kh, kw) axes
    swapped (the bug a wrong argument order in the correlation makes)."""

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight, grad_bias = SameDepthwiseConv2d.backward(
            ctx, grad_output)
        return grad_input, grad_weight.transpose(-2, -1), grad_bias


@pytest.mark.parametrize('height', [23, 71], ids=['one-band', 'bands'])
@pytest.mark.parametrize('memory_format', ['channels_last', 'contiguous'])
def test_function_equals_plain_autograd_and_a_wrong_one_fails(
        memory_format, height):
    """Float32 on channels-last NCHW views (as the blocks call it) and
    contiguous maps: within RTOL of plain autograd; a wrong weight
    gradient is far outside it."""
    torch.manual_seed(0)
    x = torch.randn(2, height, 31, 48)  # (B, H, W, C), odd sizes
    x = (x.permute(0, 3, 1, 2) if memory_format == 'channels_last' else
         x.permute(0, 3, 1, 2).contiguous()).requires_grad_()
    weight = torch.randn(48, 1, 7, 7, requires_grad=True)
    bias = torch.randn(48, requires_grad=True)
    grad_out = torch.randn(2, 48, height, 31)
    plain = _conv_grads(_plain_conv, x, weight, bias, grad_out)
    ours = _conv_grads(SameDepthwiseConv2d.apply, x, weight, bias, grad_out)
    assert_gradients_close(ours, plain)
    wrong = _conv_grads(_TransposedWeightGrad.apply, x, weight, bias,
                        grad_out)
    assert relative_error(wrong['weight'], plain['weight']) > 1e-2
    with pytest.raises(AssertionError, match='weight'):
        assert_gradients_close(wrong, plain)


@pytest.mark.parametrize('call', [
    'module', 'kwargs', 'same-string', 'no-bias', 'rectangular-kernel',
    'float64'
])
def test_depthwise_calls_are_routed(call):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 9, 11, requires_grad=True)
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    weight, bias = conv.weight, conv.bias
    with cpu_backward_routes():
        if call == 'module':
            out = conv(x)
        elif call == 'kwargs':
            out = F.conv2d(input=x, weight=weight, bias=bias, padding=2,
                           groups=8)
        elif call == 'same-string':
            out = F.conv2d(x, weight, bias, padding='same', groups=8)
        elif call == 'no-bias':
            out = F.conv2d(x, weight, None, 1, 2, 1, 8)
        elif call == 'rectangular-kernel':
            weight = torch.randn(8, 1, 5, 7, requires_grad=True)
            out = F.conv2d(x, weight, bias, 1, (2, 3), 1, 8)
        else:
            x, weight, bias = x.double(), weight.double(), bias.double()
            out = F.conv2d(x, weight, bias, 1, 2, 1, 8)
    assert type(out.grad_fn).__name__ == ROUTED_NODE
    torch.testing.assert_close(out, _plain_conv(x, weight, bias if call !=
                                                'no-bias' else None),
                               rtol=0, atol=0)


@pytest.mark.parametrize('call', [
    'dense', 'stride-2', 'dilated', 'valid-padding', 'even-kernel', '3x3',
    'rectangular-3x5',
    'reflect-padding', 'no-grad', 'inputs-without-grad', 'bfloat16',
    'autocast', 'unbatched', 'channel-multiplier'
])
def test_other_convs_run_as_they_are(call):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 9, 11, requires_grad=True)
    w = torch.randn(8, 1, 5, 5, requires_grad=True)
    with cpu_backward_routes():
        if call == 'dense':
            out = F.conv2d(x, torch.randn(8, 8, 5, 5), None, 1, 2)
        elif call == 'stride-2':
            out = F.conv2d(x, w, None, 2, 2, 1, 8)
        elif call == 'dilated':
            out = F.conv2d(x, w, None, 1, 4, 2, 8)
        elif call == 'valid-padding':
            out = F.conv2d(x, w, None, 1, 0, 1, 8)
        elif call == 'even-kernel':
            out = F.conv2d(x, torch.randn(8, 1, 6, 6), None, 1, 3, 1, 8)
        elif call == '3x3':  # oneDNN's 3x3 backward is the faster one
            out = F.conv2d(x, torch.randn(8, 1, 3, 3), None, 1, 1, 1, 8)
        elif call == 'rectangular-3x5':  # 15 taps, under 5x5
            out = F.conv2d(x, torch.randn(8, 1, 3, 5), None, 1, (1, 2), 1,
                           8)
        elif call == 'reflect-padding':
            out = nn.Conv2d(8, 8, 5, padding=2, groups=8,
                            padding_mode='reflect')(x)
        elif call == 'no-grad':
            with torch.no_grad():
                out = F.conv2d(x, w, None, 1, 2, 1, 8)
        elif call == 'inputs-without-grad':
            out = F.conv2d(x.detach(), w.detach(), None, 1, 2, 1, 8)
        elif call == 'bfloat16':
            out = F.conv2d(x.bfloat16(), w.bfloat16(), None, 1, 2, 1, 8)
        elif call == 'autocast':
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = F.conv2d(x, w, None, 1, 2, 1, 8)
        elif call == 'unbatched':
            out = F.conv2d(x[0], w, None, 1, 2, 1, 8)
        else:  # two outputs per input channel
            out = F.conv2d(x, torch.randn(16, 1, 5, 5), None, 1, 2, 1, 8)
    assert out.grad_fn is None or type(out.grad_fn).__name__ != ROUTED_NODE


# ----------------------------------------------------- StridedConv2d
@pytest.mark.parametrize('shape, out_channels, kernel, stride, padding', [
    ((2, 3, 9, 7), 4, (3, 3), (2, 2), (1, 1)),  # a stem conv, odd sizes
    ((1, 4, 8, 6), 5, (2, 2), (2, 2), (0, 0)),  # downsampling
    ((2, 3, 11, 9), 4, (4, 4), (4, 4), (0, 0)),  # patch embedding, a rest
    ((1, 2, 7, 10), 3, (3, 5), (2, 3), (0, 2)),  # rectangular
    ((1, 2, 5, 4), 3, (7, 7), (2, 2), (3, 3)),  # kernel larger than it
])
@pytest.mark.parametrize('bias', [True, False], ids=['bias', 'no-bias'])
@pytest.mark.parametrize('band_elements', [2**20, 1],
                         ids=['one-band', 'row-bands'])
def test_strided_conv_gradients_are_exact(shape, out_channels, kernel,
                                          stride, padding, bias,
                                          band_elements, monkeypatch):
    """Float64 gradcheck with the weight gradient in one band or one
    output row per band (each band with its own share of the padding)."""
    monkeypatch.setattr(memory, 'WEIGHT_GRAD_BAND_ELEMENTS', band_elements)
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(out_channels, shape[1], *kernel,
                         dtype=torch.float64, requires_grad=True)
    b = (torch.randn(out_channels, dtype=torch.float64, requires_grad=True)
         if bias else None)

    def fn(x, weight, b):
        return StridedConv2d.apply(x, weight, b, stride, padding)

    assert torch.autograd.gradcheck(fn, (x, weight, b))


class _ShiftedStridedWeightGrad(StridedConv2d):
    """A deliberately wrong gradient: the weight gradient's kernel rows
    rolled by one (the bug an off-by-one band start makes)."""

    @staticmethod
    def backward(ctx, grad_output):
        grads = StridedConv2d.backward(ctx, grad_output)
        return (grads[0], grads[1].roll(1, dims=-2)) + grads[2:]


@pytest.mark.parametrize('memory_format', ['channels_last', 'contiguous'])
@pytest.mark.parametrize('band_elements', [2**20, 3000],
                         ids=['one-band', 'bands'])
def test_strided_conv_equals_plain_autograd_and_a_wrong_one_fails(
        memory_format, band_elements, monkeypatch):
    """Float32, a 3x3 stride-2 stem conv on odd sizes (batch 2): the same
    output, gradients within RTOL of plain autograd's; a wrong weight
    gradient is caught."""
    monkeypatch.setattr(memory, 'WEIGHT_GRAD_BAND_ELEMENTS', band_elements)
    torch.manual_seed(0)
    x = torch.randn(2, 16, 37, 29)
    if memory_format == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    grad_out = torch.randn(2, 24, 19, 15)

    def grads(fn):
        out = fn(x, conv.weight, conv.bias, (2, 2), (1, 1))
        return out, dict(zip(('input', 'weight', 'bias'),
                             torch.autograd.grad(
                                 out, (x, conv.weight, conv.bias),
                                 grad_out)))

    def plain_fn(x, weight, bias, stride, padding):
        return F.conv2d(x, weight, bias, stride, padding)

    out_plain, plain = grads(plain_fn)
    out, ours = grads(StridedConv2d.apply)
    torch.testing.assert_close(out, out_plain, rtol=0, atol=0)
    assert_gradients_close(ours, plain)
    _, wrong = grads(_ShiftedStridedWeightGrad.apply)
    with pytest.raises(AssertionError, match='weight'):
        assert_gradients_close(wrong, plain)


@pytest.mark.parametrize('call', [
    'module', 'kwargs', 'no-bias', 'rectangular-stride', 'input-without-grad',
    'float64'
])
def test_strided_dense_calls_are_routed(call):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 11, requires_grad=True)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    weight, bias, stride = conv.weight, conv.bias, (2, 2)
    with cpu_backward_routes():
        if call == 'module':
            out = conv(x)
        elif call == 'kwargs':
            out = F.conv2d(input=x, weight=weight, bias=bias, stride=2,
                           padding=1)
        elif call == 'no-bias':
            bias = None
            out = F.conv2d(x, weight, None, 2, 1)
        elif call == 'rectangular-stride':
            stride = (2, 1)
            out = F.conv2d(x, weight, bias, stride, 1)
        elif call == 'input-without-grad':  # a stem on the image
            x = x.detach()
            out = conv(x)
        else:
            x, weight, bias = x.double(), weight.double(), bias.double()
            out = F.conv2d(x, weight, bias, 2, 1)
    assert type(out.grad_fn).__name__ == STRIDED_NODE
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, stride, 1),
                               rtol=0, atol=0)


@pytest.mark.parametrize('call', [
    'stride-1', 'grouped', 'dilated', 'string-padding', 'weight-without-grad',
    'no-grad', 'bfloat16', 'autocast', 'unbatched'
])
def test_other_dense_convs_run_as_they_are(call):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 11, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    with cpu_backward_routes():
        if call == 'stride-1':
            out = F.conv2d(x, w, None, 1, 1)
        elif call == 'grouped':
            out = F.conv2d(x, torch.randn(6, 2, 3, 3, requires_grad=True),
                           None, 2, 1, 1, 2)
        elif call == 'dilated':
            out = F.conv2d(x, w, None, 2, 2, 2)
        elif call == 'string-padding':
            out = F.conv2d(x, w, None, 2, 'valid')
        elif call == 'weight-without-grad':
            out = F.conv2d(x, w.detach(), None, 2, 1)
        elif call == 'no-grad':
            with torch.no_grad():
                out = F.conv2d(x, w, None, 2, 1)
        elif call == 'bfloat16':
            out = F.conv2d(x.bfloat16(), w.bfloat16(), None, 2, 1)
        elif call == 'autocast':
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = F.conv2d(x, w, None, 2, 1)
        else:
            out = F.conv2d(x[0], w, None, 2, 1)
    assert out.grad_fn is None or type(out.grad_fn).__name__ != STRIDED_NODE


def test_strided_conv_keeps_what_plain_autograd_keeps():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 2, stride=2)
    x = torch.randn(1, 8, 20, 20).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    plain = _saved_bytes(lambda: conv(x))
    with cpu_backward_routes():
        ours = _saved_bytes(lambda: conv(x))
        routed = conv(x)
    assert type(routed.grad_fn).__name__ == STRIDED_NODE
    assert ours == plain


# ------------------------------------------------------------ memory
def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps while ``fn`` runs."""
    storages = {}

    def count(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage(
        ).nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize('kernel_size', [5, 7])
def test_keeps_what_plain_autograd_keeps(kernel_size):
    torch.manual_seed(0)
    block = LocalConcentration(32, kernel_size)
    x = torch.randn(1, 40, 40, 32, requires_grad=True)

    def step():
        return block(x)

    plain = _saved_bytes(step)
    with cpu_backward_routes():
        ours = _saved_bytes(step)
        routed = step()
    assert ROUTED_NODE in {type(n).__name__ for n in graph_nodes((routed, ))}
    assert ours == plain


@pytest.mark.parametrize('name', list(FAMILIES))
def test_training_step_peak_is_not_higher(name, monkeypatch):

    def route(enabled: bool) -> None:
        monkeypatch.setattr(
            base, 'routes_backward_here',
            routes_backward_here if enabled else lambda x: False)

    peaks = training_step_peaks(name, route)
    assert peaks[True] <= peaks[False], peaks  # measured: equal
