"""Layer-wise learning-rate decay: the backbones' ``get_layer_depth`` and
:class:`BackboneLayerDecayOptimWrapperConstructor`.

The expected layer id of every parameter is written out here from its name
(for L²ViT: the ConvNeXt map of the official layer-decay constructor, spec
openmmlab.md §4 / l2vit.md §4.2), independently of the implementation, and
every group's learning rate and weight decay is compared with the formula.
"""
import re
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from mmengine.logging import MMLogger
from torch import nn
from torch.nn import GroupNorm, LayerNorm
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.engine import BackboneLayerDecayOptimWrapperConstructor

from conftest import require_toolbox

ROOT = Path(__file__).resolve().parents[1]
BASE_LR, BASE_WD, DECAY_RATE = 1e-3, 0.05, 0.8
CONSTRUCTOR = 'BackboneLayerDecayOptimWrapperConstructor'

#: Small archs; stage 2 is deep enough for L²ViT's three-block layer ids.
L2VIT_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 6, 2],
                  num_heads=[1, 2, 4, 8])
PVT_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[1, 2, 3, 1],
                num_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4])
SWIN_ARCH = dict(embed_dims=16, depths=[2, 2, 4, 2], num_heads=[1, 2, 4, 8],
                 attn_types='IIIS')


def _stage_of(name: str, pattern: str) -> Tuple[int, int]:
    """``(stage, block)`` read from ``name`` with a two-group pattern."""
    match = re.match(pattern, name)
    return int(match.group(1)), int(match.group(2))


def l2vit_ids(name: str, decay_type: str) -> Tuple[int, int]:
    """The official map (ConvNeXt's), L = 5 for depths 2-2-6-2; stage-wise:
    the stem 0, stage s (its downsampling included) s + 1, the rest 5."""
    if decay_type == 'stage_wise':
        match = re.match(r'(downsample_layers|stages)\.(\d)\.', name)
        if match is None:
            return 5, 6
        stage = int(match.group(2))
        return (0 if name.startswith('downsample_layers.0.') else stage + 1,
                6)
    last = 5  # L: 3 + (6 - 1) // 3 + 1
    if name.startswith('downsample_layers.'):
        stage = int(name.split('.')[1])
        return {0: 0, 1: 2, 2: 3, 3: last}[stage], last + 2
    if name.startswith('stages.'):
        stage, block = _stage_of(name, r'stages\.(\d)\.(\d+)\.')
        layer = {0: 1, 1: 2, 2: 3 + block // 3, 3: last}[stage]
        return layer, last + 2
    return last + 1, last + 2  # norm0..3


def pvt_ids(name: str, decay_type: str) -> Tuple[int, int]:
    """Layer-wise: the stem (patch_embed1, pos_embed1) 0, every block its
    own id, patch_embed/pos_embed of stage s with the stage's first
    block."""
    depths = PVT_ARCH['depths']
    stage_wise = decay_type == 'stage_wise'
    head = 5 if stage_wise else sum(depths) + 1
    match = re.match(r'(patch_embed|pos_embed)(\d)', name)
    if match:
        stage = int(match.group(2)) - 1
        if stage == 0:
            return 0, head + 1
        return (stage + 1 if stage_wise else sum(depths[:stage]) + 1,
                head + 1)
    if name.startswith('block'):
        stage, block = _stage_of(name, r'block(\d)\.(\d+)\.')
        stage -= 1
        return (stage + 1 if stage_wise else sum(depths[:stage]) + block +
                1, head + 1)
    return head, head + 1


def swin_ids(name: str, decay_type: str) -> Tuple[int, int]:
    """Layer-wise: patch_embed 0, block j of stage s ``sum(depths[:s]) + j
    + 1`` (mmpretrain's Swin), the patch merging after stage s with the
    first block of stage s + 1."""
    depths = SWIN_ARCH['depths']
    stage_wise = decay_type == 'stage_wise'
    head = 5 if stage_wise else sum(depths) + 1
    if name.startswith('patch_embed.'):
        return 0, head + 1
    if '.blocks.' in name:
        stage, block = _stage_of(name, r'layers\.(\d)\.blocks\.(\d+)\.')
        return (stage + 1 if stage_wise else sum(depths[:stage]) + block +
                1, head + 1)
    if '.downsample.' in name:
        stage = int(name.split('.')[1])
        return (stage + 2 if stage_wise else sum(depths[:stage + 1]) + 1,
                head + 1)
    return head, head + 1


FAMILIES: Dict[str, Tuple[Callable[..., nn.Module], Callable]] = {
    'l2vit': (lambda **kw: L2ViT(arch=L2VIT_ARCH, **kw), l2vit_ids),
    'inline_pvt': (lambda **kw: InLinePVT(arch=PVT_ARCH, out_norms=True,
                                          **kw), pvt_ids),
    'inline_swin': (lambda **kw: InLineSwin(arch=SWIN_ARCH, **kw), swin_ids),
}


class TinyDetector(nn.Module):
    """A backbone with a small neck (conv + BatchNorm) and a head."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(nn.Conv2d(128, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)


def build_groups(model: nn.Module, **paramwise_cfg) -> List[Tuple[str,
                                                                  dict]]:
    """``(parameter name, param group)`` of the optimizer the constructor
    builds for ``model``."""
    constructor = BackboneLayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper',
             optimizer=dict(type='AdamW', lr=BASE_LR,
                            weight_decay=BASE_WD)),
        paramwise_cfg)
    optimizer = constructor(model).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        (param, ) = group['params']
        groups.append((names[id(param)], group))
    return groups


def expected_depth(family: str, name: str,
                   decay_type: str) -> Tuple[int, int]:
    """``(layer_id, num_layers)`` of a model parameter name."""
    ids = FAMILIES[family][1]
    if name.startswith('backbone.'):
        return ids(name[len('backbone.'):], decay_type)
    return ids('neck', decay_type)  # any name outside the backbone: head


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
@pytest.mark.parametrize('family', list(FAMILIES))
def test_every_parameter_gets_the_decayed_lr(family, decay_type):
    torch.manual_seed(0)
    model = TinyDetector(FAMILIES[family][0]())
    groups = build_groups(model, decay_rate=DECAY_RATE,
                          decay_type=decay_type)
    assert sorted(n for n, _ in groups) == sorted(
        n for n, _ in model.named_parameters())
    seen_ids = set()
    for name, group in groups:
        layer_id, num_layers = expected_depth(family, name, decay_type)
        assert model.backbone.get_layer_depth(
            name, decay_type=decay_type) == (layer_id, num_layers), name
        expected_lr = BASE_LR * DECAY_RATE**(num_layers - 1 - layer_id)
        assert group['lr'] == pytest.approx(expected_lr, rel=1e-12), name
        assert group['weight_decay'] == BASE_WD, name
        assert group['layer_id'] == layer_id
        seen_ids.add(layer_id)
    assert seen_ids == set(range(num_layers)), 'an id is unused'


@pytest.mark.parametrize('depths,num_layers', [([2, 2, 6, 2], 7),
                                               ([2, 2, 18, 2], 11)])
def test_l2vit_num_layers_is_the_official_smallest(depths, num_layers):
    """L²ViT-T/S/B: the official map's L is at least 5 / 9 (+ stem, head)."""
    model = L2ViT(arch=dict(L2VIT_ARCH, depths=depths))
    last_block = f'backbone.stages.2.{depths[2] - 1}.mlp.fc1.weight'
    assert model.get_layer_depth(last_block) == (3 + (depths[2] - 1) // 3,
                                                 num_layers)
    assert model.get_layer_depth('backbone.stages.3.0.norm1.weight') == (
        num_layers - 2, num_layers)
    assert model.get_layer_depth('stages.3.0.norm1.weight', prefix='') == (
        num_layers - 2, num_layers)  # mmpretrain's own prefix convention
    assert model.get_layer_depth('roi_head.bbox_head.fc_cls.weight') == (
        num_layers - 1, num_layers)


def _is_norm(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit('.', 1)[0])
    return isinstance(owner, (_BatchNorm, _InstanceNorm, GroupNorm,
                              LayerNorm))


@pytest.mark.parametrize('family', list(FAMILIES))
def test_custom_keys_and_decay_multipliers_are_honoured(family):
    torch.manual_seed(0)
    model = TinyDetector(FAMILIES[family][0]())
    groups = build_groups(
        model, decay_rate=DECAY_RATE,
        custom_keys={'attn': dict(lr_mult=0.5, decay_mult=0.3)},
        norm_decay_mult=0.0, bias_decay_mult=0.1, flat_decay_mult=0.2)
    params = dict(model.named_parameters())
    counts = dict(custom=0, norm=0, bias=0, flat=0, plain=0)
    for name, group in groups:
        layer_id, num_layers = expected_depth(family, name, 'layer_wise')
        lr = BASE_LR * DECAY_RATE**(num_layers - 1 - layer_id)
        if 'attn' in name:  # custom_keys win over the other rules
            kind, lr, wd = 'custom', lr * 0.5, BASE_WD * 0.3
        elif _is_norm(model, name):
            kind, wd = 'norm', 0.0
        elif name.endswith('.bias'):
            kind, wd = 'bias', BASE_WD * 0.1
        elif params[name].ndim == 1:
            kind, wd = 'flat', BASE_WD * 0.2
        else:
            kind, wd = 'plain', BASE_WD
        counts[kind] += 1
        assert group['lr'] == pytest.approx(lr, rel=1e-12), name
        assert group['weight_decay'] == pytest.approx(wd, rel=1e-12), name
    # every rule was exercised (flat: L2ViT's temperature is 3-D, so only
    # some families have a 1-D non-bias, non-norm parameter)
    assert all(counts[k] for k in ('custom', 'norm', 'bias', 'plain'))


def test_frozen_parameters_are_left_out():
    model = TinyDetector(L2ViT(arch=L2VIT_ARCH, frozen_stages=1))
    groups = build_groups(model, decay_rate=DECAY_RATE)
    names = {n for n, _ in groups}
    assert not any(n.startswith(('backbone.downsample_layers.0.',
                                 'backbone.stages.0.')) for n in names)
    for name, group in groups:
        layer_id, num_layers = expected_depth('l2vit', name, 'layer_wise')
        assert group['lr'] == pytest.approx(
            BASE_LR * DECAY_RATE**(num_layers - 1 - layer_id), rel=1e-12)


def test_schedulers_keep_the_decay_of_every_group():
    """mmengine's schedulers scale each group's own lr (warm-up, poly)."""
    from mmengine.optim import LinearLR, PolyLR
    model = TinyDetector(L2ViT(arch=L2VIT_ARCH))
    constructor = BackboneLayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR)),
        dict(decay_rate=DECAY_RATE))
    optim_wrapper = constructor(model)
    decayed = [g['lr'] for g in optim_wrapper.param_groups]
    warmup = LinearLR(optim_wrapper, start_factor=0.1, by_epoch=False,
                      begin=0, end=4)
    poly = PolyLR(optim_wrapper, power=1.0, eta_min=0.0, by_epoch=False,
                  begin=4, end=8)
    for _ in range(6):  # through the warm-up, into the poly decay
        warmup.step()
        poly.step()
    factor = optim_wrapper.param_groups[0]['lr'] / decayed[0]
    assert 0 < factor < 1
    for lr, group in zip(decayed, optim_wrapper.param_groups):
        assert group['lr'] == pytest.approx(lr * factor, rel=1e-9)


def test_groups_are_logged_once_as_a_table(tmp_path):
    log_file = tmp_path / 'log.txt'
    MMLogger.get_instance(f'layer_decay_{uuid.uuid4().hex}',
                          log_file=str(log_file))
    build_groups(TinyDetector(L2ViT(arch=L2VIT_ARCH)),
                 decay_rate=DECAY_RATE)
    text = log_file.read_text()
    assert text.count(f'{CONSTRUCTOR}: lr = 0.001 * lr_mult * 0.8 ** '
                      '(6 - layer_id)') == 1
    rows = re.findall(r'^\s+(\d+)\s+([\d.]+)\s', text, flags=re.M)
    assert {int(layer) for layer, _ in rows} == set(range(7))
    assert {(int(layer), float(scale))
            for layer, scale in rows} == {(i, round(0.8**(6 - i), 4))
                                          for i in range(7)}


def test_a_backbone_without_get_layer_depth_is_refused():
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    constructor = BackboneLayerDecayOptimWrapperConstructor(
        cfg, dict(decay_rate=0.9))
    with pytest.raises(NotImplementedError,
                       match=r'Conv2d backbone without get_layer_depth.*'
                       r'Use an mmdet_l2vit backbone'):
        constructor(TinyDetector(nn.Conv2d(3, 128, 1)))
    with pytest.raises(NotImplementedError, match='has no backbone'):
        constructor(nn.Linear(2, 2))


@pytest.mark.parametrize('paramwise_cfg,error,match', [
    (dict(), ValueError, 'decay_rate must be a number in'),
    (dict(decay_rate=1.5), ValueError, 'decay_rate must be a number in'),
    (dict(layer_decay_rate=0.9), ValueError, 'not mmpretrain'),
    (dict(decay_rate=0.9, decay_type='layer_wise_vit'), ValueError,
     'decay_type must be one of'),
    (dict(decay_rate=0.9, num_layers=6.0), TypeError, 'must be an int'),
])
def test_bad_paramwise_cfgs_are_refused(paramwise_cfg, error, match):
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    with pytest.raises(error, match=match):
        BackboneLayerDecayOptimWrapperConstructor(cfg, paramwise_cfg)


def test_num_layers_must_match_the_backbone():
    model = TinyDetector(L2ViT(arch=L2VIT_ARCH))
    with pytest.raises(ValueError, match=r'num_layers=6, but this backbone '
                       r'has 5 layer ids .* set num_layers=5'):
        build_groups(model, decay_rate=0.9, num_layers=6)
    build_groups(model, decay_rate=0.9, num_layers=5)  # the official L
    build_groups(model, decay_rate=0.9, decay_type='stage_wise',
                 num_layers=4)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registered_into_both_toolboxes(scope):
    require_toolbox(f'{scope}.registry')
    registry = __import__(f'{scope}.registry',
                          fromlist=['OPTIM_WRAPPER_CONSTRUCTORS'])
    assert registry.OPTIM_WRAPPER_CONSTRUCTORS.module_dict[CONSTRUCTOR] is \
        BackboneLayerDecayOptimWrapperConstructor


@pytest.mark.parametrize('stem,scope,decay_type,rate', [
    ('maskrcnn_l2vit_t_coco_layer_decay', 'mmdet', 'layer_wise', 0.95),
    ('upernet_l2vit_t_ade20k_layer_decay', 'mmseg', 'stage_wise', 0.9),
])
def test_example_configs_build_the_decayed_optimizer(stem, scope, decay_type,
                                                     rate):
    """The shipped configs, built as the runner does (registry, scope)."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    require_toolbox(f'{scope}.models')
    cfg = Config.fromfile(str(ROOT / 'configs' / f'{stem}.py'))
    assert cfg.default_scope == scope
    assert cfg.optim_wrapper.constructor == CONSTRUCTOR
    init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optim_wrapper.optimizer.param_groups:
        name = names[id(group['params'][0])]
        layer_id, num_layers = expected_depth('l2vit', name, decay_type)
        assert group['lr'] == pytest.approx(
            base_lr * rate**(num_layers - 1 - layer_id), rel=1e-12), name
        expected_wd = 0.0 if group['params'][0].ndim == 1 else \
            cfg.optim_wrapper.optimizer.weight_decay
        assert group['weight_decay'] == expected_wd, name
