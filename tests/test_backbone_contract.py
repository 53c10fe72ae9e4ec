"""The mmdet/mmseg backbone contract, for each of the three families.

Every test here holds for L2ViT, InLine-PVT and InLine-Swin alike and is
parametrized over them (small archs): output shapes at odd sizes,
``out_indices``, ``frozen_stages``, ``norm_eval``, ``with_cp``, the drop-path
schedule, ``init_cfg`` / ``pretrained`` rules, bad arguments and inputs, bad
checkpoints, building through the toolboxes' registries and ``compile``.
Family-specific behaviour (official parity, attention maths, position
embeddings, window shifts, patch merging, checkpoint layouts) is tested in
the family files.
"""
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.checkpoint import (CheckpointError, extract_state_dict,
                                    read_checkpoint_file)
from mmdet_l2vit.models.backbones import base
from mmdet_l2vit.models.layers import common
from mmdet_l2vit.models.layers.common import BlockStack

from conftest import require_toolbox

# The reduced configurations of the reference checkpoints.
L2VIT_R1 = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                num_heads=[1, 2, 4, 8])
PVT_R1 = dict(L2VIT_R1, mlp_ratios=[8, 8, 4, 4])
SWIN_R1 = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
               window_size=56, attn_types='IIIS', mlp_ratio=4.)


def _ceil_sizes(h: int, w: int) -> List[Tuple[int, int]]:
    sizes = [(math.ceil(h / 4), math.ceil(w / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2),
                      math.ceil(sizes[-1][1] / 2)))
    return sizes


def _floor_sizes(h: int, w: int) -> List[Tuple[int, int]]:
    sizes = [(h // 4, w // 4)]
    for _ in range(3):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


def _prefixes(stem: List[str], stage: Callable[[int], List[str]]
              ) -> Dict[int, List[str]]:
    groups = {-1: stem}
    groups.update({i: stage(i) for i in range(4)})
    return groups


@dataclass
class Family:
    """What the contract tests need to know about one family."""
    cls: type
    arch: Dict[str, Any]
    #: Stage widths of ``arch``.
    widths: List[int]
    #: Output sizes of an H x W input.
    sizes: Callable[[int, int], List[Tuple[int, int]]]
    #: Smallest accepted input side.
    min_size: int
    #: Reference checkpoint and the arch it was saved from.
    checkpoint: str
    checkpoint_arch: Dict[str, Any]
    #: Parameter-name prefixes frozen with the stem (-1) and each stage.
    groups: Dict[int, List[str]]
    #: BatchNorm layers in a model of ``arch``.
    num_batchnorms: int
    #: Keyword arguments that give the model output norms.
    norm_kwargs: Dict[str, Any] = field(default_factory=dict)
    #: (arch, message) pairs the constructor refuses.
    bad_archs: List[Tuple[Any, str]] = field(default_factory=list)

    def build(self, seed: int = 0, **kwargs) -> nn.Module:
        torch.manual_seed(seed)
        model = self.cls(arch=kwargs.pop('arch', self.arch), **kwargs)
        model.init_weights()
        return model.eval()


FAMILIES = {
    'l2vit': Family(
        cls=L2ViT, arch=L2VIT_R1, widths=[16, 32, 64, 128],
        sizes=_ceil_sizes, min_size=1, checkpoint='l2vit_r1_cls.pth',
        checkpoint_arch=L2VIT_R1,
        groups=_prefixes(['downsample_layers.0'], lambda i: [
            f'stages.{i}', f'norm{i}'] + ([f'downsample_layers.{i}']
                                          if i else [])),
        num_batchnorms=2 + 4,  # the conv stem and one LCM per stage
        bad_archs=[
            ('huge', 'unknown arch'),
            (dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2]),
             'malformed'),
            (dict(L2VIT_R1, embed_dims=[16, 32, 64]),
             'must be 4 positive ints'),
            (dict(L2VIT_R1, num_heads=[3, 2, 4, 8]), 'not divisible'),
            (dict(L2VIT_R1, windowsize=7), 'unknown keys'),
            (dict(L2VIT_R1, window_size=0), 'window_size'),
            (dict(L2VIT_R1, embed_dims=[15, 30, 60, 120],
                  num_heads=[1, 2, 4, 8]), 'must be even'),
            (['tiny'], 'arch must be a str or dict'),
        ]),
    'inline_pvt': Family(
        cls=InLinePVT, arch=dict(PVT_R1, depths=[1, 1, 1, 1]),
        widths=[16, 32, 64, 128], sizes=_floor_sizes, min_size=32,
        checkpoint='inline_pvt_r1_cls.pth', checkpoint_arch=PVT_R1,
        groups=_prefixes(['patch_embed1', 'pos_embed1'], lambda i: [
            f'block{i + 1}', f'norm{i}'] + ([
                f'patch_embed{i + 1}', f'pos_embed{i + 1}'] if i else [])),
        num_batchnorms=0, norm_kwargs=dict(out_norms=True),
        bad_archs=[
            ('huge', 'unknown arch'),
            (dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8]), 'malformed'),
            (dict(PVT_R1, embed_dims=[16, 32, 64]),
             'must be 4 positive ints'),
            (dict(PVT_R1, num_heads=[3, 2, 4, 8]), 'not divisible'),
            (dict(PVT_R1, mlp_ratios=[8, 8, 0, 4]), 'mlp_ratios'),
            (dict(PVT_R1, attn_types='IIII'), 'unknown keys'),
        ]),
    'inline_swin': Family(
        # 'MSIS1': InLine and shifted softmax blocks in stage 0, softmax
        # blocks in stage 1, InLine in stage 2, softmax in stage 3
        cls=InLineSwin, arch=dict(SWIN_R1, attn_types='MSIS1'),
        widths=[16, 32, 64, 128], sizes=_ceil_sizes, min_size=1,
        checkpoint='inline_swin_r1_cls.pth', checkpoint_arch=SWIN_R1,
        groups=_prefixes(['patch_embed'],
                         lambda i: [f'layers.{i}', f'norm{i}']),
        num_batchnorms=0,
        bad_archs=[
            ('large', 'unknown arch'),
            (dict(embed_dims=16, depths=[2, 2, 2, 2]), 'malformed'),
            (dict(SWIN_R1, embed_dims=[16, 32, 64, 128]), 'positive int'),
            (dict(SWIN_R1, depths=[2, 2, 2]), 'must be 4 positive ints'),
            (dict(SWIN_R1, num_heads=[3, 2, 4, 8]), 'not divisible'),
            (dict(SWIN_R1, mlp_ratios=[4] * 4), 'unknown keys'),
            (dict(SWIN_R1, attn_types='IIXS'), 'attn_types'),
        ]),
}
FAMILY_IDS = list(FAMILIES)


@pytest.fixture(params=FAMILY_IDS)
def family(request) -> Family:
    return FAMILIES[request.param]


def group_of(family: Family, name: str) -> Optional[int]:
    """The freezing group (-1: stem, i: stage i) a parameter or module name
    belongs to; None for containers above the groups."""
    found = [g for g, prefixes in family.groups.items()
             if any(name == p or name.startswith(p + '.') for p in prefixes)]
    assert len(found) <= 1, (name, found)
    return found[0] if found else None


def pretrained(path, **kwargs) -> dict:
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def blocks_of(model: nn.Module) -> List[nn.Module]:
    """Every block, in order (the stages are ``BlockStack`` modules)."""
    return [b for m in model.modules() if isinstance(m, BlockStack)
            for b in m]


def weighted_sum(outs) -> torch.Tensor:
    """A loss that weights every output differently."""
    return sum((o * (i + 1)).sum() for i, o in enumerate(outs))


# ------------------------------------------------------------ forward
@pytest.mark.parametrize('inference', ['reference', 'auto'])
@pytest.mark.parametrize('hw', [(33, 33), (97, 131), (61, 45), (37, 32)])
def test_output_shapes_at_odd_sizes(family, hw, inference):
    model = family.build(inference=inference)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    assert isinstance(outs, tuple) and len(outs) == 4
    for out, width, size in zip(outs, family.widths, family.sizes(*hw)):
        assert out.shape == (2, width, *size)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()


def test_smallest_input(family):
    model = family.build()
    side = family.min_size
    with torch.no_grad():
        outs = model(torch.randn(1, 3, side, side + 3))
    assert [tuple(o.shape[2:]) for o in outs] == \
        family.sizes(side, side + 3)
    if side > 1:
        with pytest.raises(ValueError, match=f'at least {side}x{side}'):
            model(torch.randn(1, 3, side - 1, 64))


@pytest.mark.parametrize('inference', ['reference', 'auto'])
def test_images_of_a_batch_do_not_interact(family, inference):
    model = family.build(inference=inference)
    x = torch.randn(2, 3, 61, 45)
    with torch.no_grad():
        together = model(x)
        alone = [model(x[i:i + 1]) for i in range(2)]
    for level, out in enumerate(together):
        for i in range(2):
            torch.testing.assert_close(out[i:i + 1], alone[i][level],
                                       rtol=0, atol=1e-5)


def test_bf16_autocast_is_finite_and_close(family):
    model = family.build()
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for ref, out in zip(reference, low):
        assert torch.isfinite(out).all()
        error = (out.float() - ref).norm() / ref.norm()
        assert error < 0.05, error


# ------------------------------------------------- out_indices, freezing
@pytest.mark.parametrize('out_indices', [(0, ), (1, 3), (3, 0, 2)])
def test_out_indices_select_outputs_and_their_norms(family, out_indices):
    model = family.build(out_indices=out_indices, **family.norm_kwargs)
    norms = sorted(n for n, _ in model.named_children()
                   if n.startswith('norm') and n[4:].isdigit())
    assert norms == sorted(f'norm{i}' for i in out_indices)
    hw = (64, 96)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    sizes = family.sizes(*hw)
    assert [tuple(o.shape[1:]) for o in outs] == [
        (family.widths[i], *sizes[i]) for i in out_indices
    ]
    full = family.build(**family.norm_kwargs)
    with torch.no_grad():
        all_outs = full(torch.randn(1, 3, *hw))
    assert len(all_outs) == 4


@pytest.mark.parametrize('out_indices', [(4, ), (), (-1, ), (0.5, )])
def test_bad_out_indices_are_rejected(family, out_indices):
    with pytest.raises(ValueError, match='out_indices'):
        family.cls(arch=family.arch, out_indices=out_indices)


@pytest.mark.parametrize('frozen_stages', [-1, 0, 2, 4])
def test_frozen_stages_stay_frozen_through_train(family, frozen_stages):
    model = family.build(frozen_stages=frozen_stages, **family.norm_kwargs)
    model.train()
    groups = {}
    for name, param in model.named_parameters():
        group = group_of(family, name)
        assert group is not None, f'{name} is in no stage'
        groups[name] = group
        assert param.requires_grad == (group >= frozen_stages), name
    assert set(groups.values()) == {-1, 0, 1, 2, 3}
    for name, module in model.named_modules():
        group = group_of(family, name)
        if group is not None:
            assert module.training == (group >= frozen_stages), name
    # a training step: frozen parameters get no gradient, frozen BatchNorm
    # statistics do not move
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    weighted_sum(model(x)).backward()
    for name, param in model.named_parameters():
        assert (param.grad is None) == (groups[name] < frozen_stages), name
    for name, buffer in model.named_buffers():
        group = group_of(family, name)
        if group is not None and group < frozen_stages:
            assert torch.equal(buffer, buffers[name]), name


@pytest.mark.parametrize('frozen_stages', [-2, 5])
def test_bad_frozen_stages_are_rejected(family, frozen_stages):
    with pytest.raises(ValueError, match='frozen_stages'):
        family.cls(arch=family.arch, frozen_stages=frozen_stages)


@pytest.mark.parametrize('norm_eval', [False, True])
def test_norm_eval_keeps_batchnorm_statistics(family, norm_eval):
    model = family.build(norm_eval=norm_eval)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == family.num_batchnorms
    for module in model.modules():
        expected = not (norm_eval and isinstance(module, _BatchNorm))
        assert module.training == expected, module
    before = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(2, 3, 32, 32))
    for bn, mean in zip(bns, before):
        assert torch.equal(bn.running_mean, mean) == norm_eval


# ---------------------------------------------------- with_cp, drop path
def test_with_cp_gives_same_outputs_gradients_and_buffers(family,
                                                         monkeypatch):
    calls = []
    checkpoint = common.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(args[0])
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(common, 'checkpoint', counting_checkpoint)
    plain = family.build(drop_path_rate=0.3)
    ckpt = family.cls(arch=family.arch, drop_path_rate=0.3, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 61, 45)
    results = []
    for model in (plain, ckpt):
        model.train()
        calls.clear()
        inputs = x.clone().requires_grad_()
        torch.manual_seed(1)
        outs = model(inputs)
        weighted_sum(outs).backward()
        results.append((outs, inputs.grad,
                        {n: p.grad for n, p in model.named_parameters()},
                        {n: b.clone() for n, b in model.named_buffers()},
                        list(calls)))
    (outs_a, gx_a, grads_a, bufs_a, calls_a), \
        (outs_b, gx_b, grads_b, bufs_b, calls_b) = results
    assert calls_a == [] and calls_b == blocks_of(ckpt)
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5,
                                   atol=1e-6, msg=name)
    for name in bufs_a:  # BatchNorm statistics are updated once per step
        torch.testing.assert_close(bufs_a[name], bufs_b[name], msg=name)
    # the setter switches every stage
    ckpt.with_cp = False
    assert not any(m.with_cp for m in ckpt.modules()
                   if isinstance(m, BlockStack))


def test_drop_path_schedule_is_linear_over_all_blocks(family):
    model = family.cls(arch=family.arch, drop_path_rate=0.3)
    blocks = blocks_of(model)
    assert len(blocks) == sum(family.arch['depths'])
    rates = [0. if isinstance(b.drop_path, nn.Identity) else
             b.drop_path.drop_prob for b in blocks]
    assert rates == pytest.approx(
        torch.linspace(0, 0.3, len(blocks)).tolist())
    none = family.cls(arch=family.arch, drop_path_rate=0.)
    assert all(isinstance(b.drop_path, nn.Identity)
               for b in blocks_of(none))


# ------------------------------------------------- init_cfg / pretrained
def test_pretrained_argument_rules(family, reference_file):
    with pytest.raises(TypeError, match='pretrained must be a str'):
        family.cls(arch=family.arch, pretrained=123)
    with pytest.raises(AssertionError, match='cannot be set at the same'):
        family.cls(arch=family.arch, pretrained='a.pth',
                   init_cfg=pretrained('a.pth'))
    path = str(reference_file(family.checkpoint))
    with pytest.warns(DeprecationWarning):
        model = family.cls(arch=family.checkpoint_arch, pretrained=path)
    assert model.init_cfg == dict(type='Pretrained', checkpoint=path)
    model.init_weights()
    raw, _ = extract_state_dict(read_checkpoint_file(path))
    own = model.state_dict()
    shared = [k for k in own if k in raw]
    assert len(shared) > 0.9 * len(own)
    for key in shared:
        assert torch.equal(own[key], raw[key]), key


def test_bad_pretrained_init_cfgs_are_rejected(family):
    model = family.cls(arch=family.arch, init_cfg=pretrained(
        'a.pth', strict=False))
    with pytest.raises(ValueError, match='accepts'):
        model.init_weights()
    model = family.cls(arch=family.arch,
                       init_cfg=[pretrained('a.pth'), pretrained('b.pth')])
    with pytest.raises(ValueError, match='only one Pretrained'):
        model.init_weights()


def test_other_init_cfgs_are_applied_after_the_default_init(family):
    model = family.build(init_cfg=dict(type='Constant', layer='LayerNorm',
                                       val=2., bias=0.5))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms
    for norm in norms:
        assert torch.equal(norm.weight, torch.full_like(norm.weight, 2.))
        assert torch.equal(norm.bias, torch.full_like(norm.bias, 0.5))


@pytest.mark.parametrize('stored, prefix', [
    ('backbone.', None),  # a detector / segmentor file: taken as is
    ('teacher.', 'teacher.'),
    ('backbone.', 'backbone.'),
], ids=['detector-file', 'prefix', 'backbone-prefix'])
def test_a_prefixed_checkpoint_loads(family, tmp_path, stored, prefix):
    source = family.build(seed=1, **family.norm_kwargs)
    state = {f'{stored}{k}': v for k, v in source.state_dict().items()}
    state['neck.conv.weight'] = torch.zeros(3)
    path = tmp_path / 'detector.pth'
    torch.save(dict(state_dict=state), path)
    model = family.cls(arch=family.arch, init_cfg=pretrained(
        path, prefix=prefix), **family.norm_kwargs)
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------ bad arguments, inputs
def _bad_arch_cases():
    return [
        pytest.param(fam.cls, arch, match, id=f'{name}-{i}')
        for name, fam in FAMILIES.items()
        for i, (arch, match) in enumerate(fam.bad_archs)
    ]


@pytest.mark.parametrize('cls, arch, match', _bad_arch_cases())
def test_bad_arch_is_rejected(cls, arch, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(arch=arch)


def test_bad_options_are_rejected(family):
    with pytest.raises(ValueError, match='inference must be'):
        family.cls(arch=family.arch, inference='fast')
    with pytest.raises(TypeError, match='compile must be'):
        family.cls(arch=family.arch, compile='yes')
    if family.cls is not L2ViT:
        with pytest.raises(ValueError, match='kernel_func'):
            family.cls(arch=family.arch, kernel_func='softmax')


@pytest.mark.parametrize('shape', [(1, 1, 64, 64), (1, 4, 64, 64),
                                   (3, 64, 64)])
def test_images_of_another_layout_are_rejected(family, shape):
    model = family.build()
    with pytest.raises(ValueError, match=r'expects images of shape \(B, 3'):
        model(torch.randn(*shape))


def test_in_channels_sets_the_image_channels(family):
    model = family.build(in_channels=1)
    with torch.no_grad():
        outs = model(torch.randn(1, 1, 64, 64))
    assert len(outs) == 4
    with pytest.raises(ValueError, match=r'expects images of shape \(B, 1'):
        model(torch.randn(1, 3, 64, 64))


# ------------------------------------------------------ bad checkpoints
def test_missing_truncated_and_corrupt_checkpoints(family, tmp_path,
                                                   reference_file):
    model = family.cls(arch=family.checkpoint_arch,
                       init_cfg=pretrained(tmp_path / 'no.pth'))
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        model.init_weights()
    data = reference_file(family.checkpoint).read_bytes()
    for name, content in [('head.pth', data[:len(data) // 3]),
                          ('tail.pth', data[:len(data) - 100])]:
        path = tmp_path / name
        path.write_bytes(content)
        model = family.cls(arch=family.checkpoint_arch,
                           init_cfg=pretrained(path))
        with pytest.raises(CheckpointError, match='truncated, corrupt'):
            model.init_weights()
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'\x00' * 1000)
    model = family.cls(arch=family.checkpoint_arch,
                       init_cfg=pretrained(corrupt))
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        model.init_weights()


@pytest.mark.parametrize('name, other', [
    pytest.param(a, b, id=f'{a}-{b}') for a in FAMILY_IDS for b in FAMILY_IDS
    if a != b
])
def test_checkpoint_of_another_family_is_refused(name, other,
                                                 reference_file):
    family, source = FAMILIES[name], FAMILIES[other]
    path = reference_file(source.checkpoint)
    torch.manual_seed(0)
    model = family.cls(arch=family.checkpoint_arch,
                       init_cfg=pretrained(path))
    torch.manual_seed(1)
    with pytest.raises(CheckpointError) as info:
        model.init_weights()
    message = str(info.value)
    assert (f'looks like a {source.cls.__name__} model, not '
            f'{family.cls.__name__}') in message
    assert 'missing keys [' in message and 'unexpected keys [' in message
    # nothing of it was loaded: the model is as initialised from scratch
    torch.manual_seed(0)
    scratch = family.cls(arch=family.checkpoint_arch)
    torch.manual_seed(1)
    scratch.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, scratch.state_dict()[key]), key


def test_other_size_of_the_family_is_refused_naming_shapes(family,
                                                           reference_file):
    model = family.cls(arch='tiny', init_cfg=pretrained(
        reference_file(family.checkpoint)))
    with pytest.raises(CheckpointError, match='mis-shaped keys.*check `arch`'):
        model.init_weights()


# ------------------------------------------------------ toolbox builds
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_through_toolbox_registry(family, scope):
    require_toolbox(f'{scope}.models')
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(
        dict(type=family.cls.__name__, arch=family.arch,
             out_indices=(1, 2, 3), **family.norm_kwargs))
    assert type(model) is family.cls
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 96))
    sizes = family.sizes(64, 96)
    assert [tuple(o.shape[1:]) for o in outs] == [
        (family.widths[i], *sizes[i]) for i in (1, 2, 3)
    ]


# ------------------------------------------------------------- compile
@pytest.fixture
def fresh_dynamo():
    """A clean dynamo state: every backbone compiles the same
    ``nn.Module.__call__`` code object, and an earlier test's frames (other
    shapes) would turn on dynamic shapes."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_option_runs_the_backbone_compiled(family, fresh_dynamo):
    """``compile`` runs the backbone through torch.compile: the backend
    receives one graph (``fullgraph=True``: no graph breaks) and the
    compiled callable computes the outputs; the second call reuses it.
    (A counting eager backend keeps the test fast; inductor is exercised by
    tools/benchmark.py --compile.)"""
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = family.build()
    model = family.build(compile=dict(backend=backend, fullgraph=True))
    x = torch.randn(2, 3, 77, 101)
    with torch.no_grad():
        expected = eager(x)
        outs = model(x)
        assert len(graphs) == 1
        assert model in base._COMPILED and eager not in base._COMPILED
        again = model(x)
    assert len(graphs) == 1
    ops = {str(node.target) for node in graphs[0].graph.nodes
           if node.op in ('call_function', 'call_module', 'call_method')}
    assert any('linear' in op for op in ops), ops
    for a, b, c in zip(expected, outs, again):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        assert torch.equal(b, c)
    # the compiled callable lives outside the module: copies (EMA) and
    # state dicts are unaffected
    clone = copy.deepcopy(model)
    assert clone not in base._COMPILED
    assert model.state_dict().keys() == eager.state_dict().keys()
