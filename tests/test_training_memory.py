"""Training memory: LayerNorm and GELU outputs recomputed in backward.

Inside ``recompute_norms_and_gelus`` (turned on by the backbones' forward
whenever autograd records) autograd stores those outputs as recipes and
rebuilds them in backward. The gradients must be those of plain autograd,
the recipes must really be used, and a training step must hold less live
tensor memory.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.analysis.live_memory import LiveTensorPeak
from mmdet_l2vit.models.backbones import base
from mmdet_l2vit.models.layers import memory
from mmdet_l2vit.models.layers.common import Mlp
from mmdet_l2vit.models.layers.memory import (recompute_norms_and_gelus,
                                              saves_memory_here)

FAMILIES = {
    'l2vit': (L2ViT, dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                          num_heads=[1, 2, 4, 8])),
    'inline_pvt': (InLinePVT, dict(embed_dims=[16, 32, 64, 128],
                                   depths=[1, 1, 1, 1],
                                   num_heads=[1, 2, 4, 8],
                                   mlp_ratios=[8, 8, 4, 4])),
    # InLine and shifted softmax blocks in stage 0 (16x12 at 61x45)
    'inline_swin': (InLineSwin, dict(embed_dims=16, depths=[2, 2, 2, 2],
                                     num_heads=[1, 2, 4, 8],
                                     attn_types='MSIS1')),
}


class UnpackSpy:
    """Counts what ``memory._unpack`` rebuilds from recipes and what it
    passes through (wraps it and calls through)."""

    def __init__(self, monkeypatch) -> None:
        self.recipes = 0
        self.tensors = 0
        unpack = memory._unpack

        def spy(packed):
            if isinstance(packed, memory._Recipe):
                self.recipes += 1
            else:
                self.tensors += 1
            return unpack(packed)

        monkeypatch.setattr(memory, '_unpack', spy)

    def reset(self) -> None:
        self.recipes = self.tensors = 0


@pytest.fixture
def unpacked(monkeypatch) -> UnpackSpy:
    return UnpackSpy(monkeypatch)


def set_hooks(monkeypatch, enabled: bool) -> None:
    """Turn the backbones' recomputation on or off."""
    monkeypatch.setattr(base, 'saves_memory_here',
                        saves_memory_here if enabled else lambda: False)


def perturbed(model: nn.Module) -> nn.Module:
    """Move LayerNorm affines and BatchNorm statistics away from their
    initial values (identity norms hide wrong recomputations)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(torch.randn_like(module.weight), alpha=.2)
                module.bias.add_(torch.randn_like(module.bias), alpha=.2)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0., .2)
                module.running_var.uniform_(.5, 2.)
    return model


def training_step(model: nn.Module, x: torch.Tensor, seed: int = 1):
    """Forward and backward of a weighted loss; returns the outputs, the
    input's gradient and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    inputs = x.clone().requires_grad_()
    torch.manual_seed(seed)  # the same drop-path masks in every run
    outs = model(inputs)
    sum((o * (i + 1)).sum() for i, o in enumerate(outs)).backward()
    return ([o.detach() for o in outs], inputs.grad,
            {n: p.grad for n, p in model.named_parameters()})


def assert_same_step(a, b) -> None:
    (outs_a, gx_a, grads_a), (outs_b, gx_b, grads_b) = a, b
    for out_a, out_b in zip(outs_a, outs_b):
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    torch.testing.assert_close(gx_a, gx_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name] is not None, name
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0,
                                   atol=1e-6, msg=name)


def hooked_and_plain_steps(model, monkeypatch, unpacked):
    """One training step of ``model`` on a (2, 3, 61, 45) input with the
    recompute hooks on, then off: ``({on: step}, {on: recipes unpacked})``."""
    x = torch.randn(2, 3, 61, 45)
    steps, recipes = {}, {}
    for enabled in (True, False):
        set_hooks(monkeypatch, enabled)
        unpacked.reset()
        steps[enabled] = training_step(model, x)
        recipes[enabled] = unpacked.recipes
    return steps, recipes


# ------------------------------------------------------------ backbones
@pytest.mark.parametrize('with_cp', [False, True], ids=['plain', 'with_cp'])
@pytest.mark.parametrize('drop_path_rate', [0., .3], ids=['dp0', 'dp.3'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_recomputed_gradients_equal_plain_autograd(name, drop_path_rate,
                                                   with_cp, unpacked,
                                                   monkeypatch):
    cls, arch = FAMILIES[name]
    torch.manual_seed(0)
    model = cls(arch=arch, drop_path_rate=drop_path_rate, with_cp=with_cp)
    model.init_weights()
    perturbed(model).train()
    steps, recipes = hooked_and_plain_steps(model, monkeypatch, unpacked)
    assert recipes[False] == 0
    if not with_cp:
        # every pre-norm and MLP of every block at least
        assert recipes[True] >= 2 * sum(arch['depths']), recipes
    assert_same_step(steps[True], steps[False])


@pytest.mark.parametrize('name', list(FAMILIES))
def test_recomputed_gradients_under_bf16_autocast(name, unpacked,
                                                  monkeypatch):
    cls, arch = FAMILIES[name]
    torch.manual_seed(0)
    model = cls(arch=arch, drop_path_rate=.2)
    model.init_weights()
    perturbed(model).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        steps, recipes = hooked_and_plain_steps(model, monkeypatch, unpacked)
    assert recipes[True] > 0 and recipes[False] == 0
    assert_same_step(steps[True], steps[False])


def training_step_peaks(name: str, set_machinery) -> dict:
    """The live-tensor peak of one training step (192x160, batch 1) of the
    small model of family ``name``, with ``set_machinery(False)`` and with
    ``set_machinery(True)`` applied before the step."""
    cls, arch = FAMILIES[name]
    torch.manual_seed(0)
    model = cls(arch=arch)
    model.init_weights()
    model.train()
    x = torch.randn(1, 3, 192, 160)
    peaks = {}
    for enabled in (False, True):
        set_machinery(enabled)
        model.zero_grad(set_to_none=True)
        with LiveTensorPeak() as tracker:
            outs = model(x)
            sum(o.sum() for o in outs).backward()
        del outs
        peaks[enabled] = tracker.peak_bytes
    return peaks


@pytest.mark.parametrize('name', list(FAMILIES))
def test_hooks_lower_the_live_peak_of_a_training_step(name, monkeypatch):
    # without the backward routes, whose MLP tail keeps no GELU output
    # either (their own peak: test_training_speed_functions.py)
    monkeypatch.setattr(base, 'routes_backward_here', lambda x: False)
    peaks = training_step_peaks(
        name, lambda enabled: set_hooks(monkeypatch, enabled))
    # measured: 0.78 (L2ViT), 0.82 (InLine-PVT), 0.80 (InLine-Swin)
    assert peaks[True] < 0.9 * peaks[False], peaks


def _saved_bytes(fn, monkeypatch, recompute: bool) -> int:
    """Bytes of the distinct storages autograd keeps while ``fn`` runs,
    plainly or inside ``recompute_norms_and_gelus`` (a recipe counts as
    the tensors it holds)."""
    storages = {}

    def count(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    if not recompute:
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            fn()
        return sum(storages.values())
    pack = memory._pack

    def counting_pack(t):
        packed = pack(t)
        held = packed.inputs if isinstance(packed, memory._Recipe) else (
            packed, )
        for item in held:
            count(item)
        return packed

    monkeypatch.setattr(memory, '_pack', counting_pack)
    with recompute_norms_and_gelus():
        fn()
    return sum(storages.values())


def _perturbed_norm(channels: int) -> nn.LayerNorm:
    return perturbed(nn.LayerNorm(channels))


def test_norm_mlp_saves_only_the_inputs_and_hidden(monkeypatch):
    """fc2(gelu(fc1(norm(x)))): the normalised map and the GELU output are
    not kept for backward (rebuilt from x and the hidden map)."""
    torch.manual_seed(0)
    mlp, norm = Mlp(32, 128), _perturbed_norm(32)
    x = torch.randn(1, 64, 64, 32, requires_grad=True)

    def step():
        return mlp(norm(x))

    plain = _saved_bytes(step, monkeypatch, recompute=False)
    ours = _saved_bytes(step, monkeypatch, recompute=True)
    activation = x.numel() * 4
    # plain: x, normed, 4x hidden, 4x gelu out (+ weights, statistics);
    # ours: x, 4x hidden (+ weights, statistics)
    assert plain - ours >= 5 * activation - 1024, (plain, ours)


@pytest.mark.parametrize('case', [
    'norm-linear', 'mlp', 'view-of-gelu', 'permuted-norm', 'gelu-tanh',
    'norm-of-gelu', 'functional-norm', 'disabled'
])
def test_recipes_rebuild_exactly_what_was_saved(case, unpacked):
    """Each pattern gives plain autograd's gradients; recipes are used
    exactly where the hooks can rebuild the tensor."""
    torch.manual_seed(0)
    norm, norm2 = _perturbed_norm(16), _perturbed_norm(16)
    fc1, fc2 = nn.Linear(16, 16), nn.Linear(8, 16)
    scale = nn.Parameter(torch.randn(1, 16, 1, 1, dtype=torch.float64))
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64, requires_grad=True)
    for module in (norm, norm2, fc1, fc2):
        module.double()

    def run():
        if case == 'norm-linear':
            return fc1(norm(x))
        if case == 'mlp':
            return fc1(F.gelu(fc1(norm(x))))
        if case == 'view-of-gelu':  # an offset, strided view
            return fc2(F.gelu(fc1(x))[..., 3:11])
        if case == 'permuted-norm':  # what a conv on the NCHW view saves
            normed = norm(x).permute(0, 3, 1, 2)
            return (normed * scale).permute(0, 2, 3, 1)
        if case == 'gelu-tanh':
            return fc1(F.gelu(fc1(x), approximate='tanh'))
        if case == 'norm-of-gelu':  # the norm's input is itself a recipe
            return fc1(norm2(F.gelu(fc1(x))))
        if case == 'functional-norm':  # no module: eps unknown, kept
            return fc1(F.layer_norm(x, (16, ), norm.weight, norm.bias))
        return fc1(norm(x))

    params = [x, scale] + [p for m in (norm, norm2, fc1, fc2)
                           for p in m.parameters()]
    grad_out = None
    results = []
    for hooked in (False, True):
        unpacked.reset()
        with recompute_norms_and_gelus(enabled=hooked and
                                       case != 'disabled'):
            out = run()
        grad_out = torch.randn_like(out) if grad_out is None else grad_out
        grads = torch.autograd.grad(out, params, grad_out,
                                    allow_unused=True)
        results.append((out.detach(), grads, unpacked.recipes))
    (out_a, grads_a, recipes_a), (out_b, grads_b, recipes_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    expected = {'norm-linear': 1, 'mlp': 2, 'view-of-gelu': 1,
                'permuted-norm': 1, 'gelu-tanh': 1, 'norm-of-gelu': 1,
                'functional-norm': 0, 'disabled': 0}[case]
    assert recipes_a == 0 and recipes_b == expected


@pytest.mark.filterwarnings('ignore:`torch.jit.trace` is deprecated')
def test_saves_memory_only_where_autograd_records():
    assert saves_memory_here()
    with torch.no_grad():
        assert not saves_memory_here()
    seen = []

    def fn(x):
        seen.append(saves_memory_here())
        return x * 2

    torch.jit.trace(fn, torch.randn(3), check_trace=False)
    assert seen == [False]
