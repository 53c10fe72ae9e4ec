"""Every shipped config loads, follows its recipe and builds its model; one
detector and one segmentor per backbone family take a training step and
predict on CPU."""
import ast
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from mmengine.config import Config

from conftest import require_toolbox

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'

L2VIT = {'t': ('tiny', [96, 192, 384, 768], 'Tiny'),
         's': ('small', [96, 192, 384, 768], 'Small'),
         'b': ('base', [128, 256, 512, 1024], 'Base')}
PVT = {'t': 'tiny', 's': 'small', 'm': 'medium', 'l': 'large'}
SWIN = {'t': ('tiny', [96, 192, 384, 768]),
        's': ('small', [96, 192, 384, 768]),
        'b': ('base', [128, 256, 512, 1024])}
#: Official L2ViT drop_path per size and schedule (l2vit spec §2).
L2VIT_DROP_PATH = {('t', '1x'): 0.1, ('s', '1x'): 0.1, ('b', '1x'): 0.2,
                   ('t', '3x'): 0.2, ('s', '3x'): 0.2, ('b', '3x'): 0.3}


def expected_configs() -> Dict[str, dict]:
    """Config stem -> the facts it must state (from the issue and specs)."""
    out: Dict[str, dict] = {}
    for k, (arch, dims, name) in L2VIT.items():
        ckpt = f'checkpoints/L2ViT-{name}-checkpoint-best-ema.pth'
        for sched, epochs in (('1x', 12), ('3x', 36)):
            sfx = '' if sched == '1x' else '_3x'
            dp = L2VIT_DROP_PATH[(k, sched)]
            common = dict(type='L2ViT', arch=arch, ckpt=ckpt, dp=dp, lr=1e-4,
                          wd=0.05, epochs=epochs, ms_crop=True)
            out[f'maskrcnn_l2vit_{k}{sfx}_coco'] = dict(
                common, detector='MaskRCNN', neck=dims, out=(0, 1, 2, 3))
            out[f'retinanet_l2vit_{k}{sfx}_coco'] = dict(
                common, detector='RetinaNet', neck=dims[1:], out=(1, 2, 3))
        out[f'upernet_l2vit_{k}_ade20k'] = dict(
            type='L2ViT', arch=arch, ckpt=ckpt, dp=0.3, lr=6e-5, wd=0.01,
            iters=160000, head=dims)
    out['semfpn_l2vit_t_ade20k'] = dict(
        type='L2ViT', arch='tiny', dp=0.1, lr=2e-4, wd=1e-4, iters=40000,
        ckpt='checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth')
    for k, arch in PVT.items():
        ckpt = f'checkpoints/inline_pvt_{k}.pth'
        out[f'maskrcnn_inline_pvt_{k}_coco'] = dict(
            type='InLinePVT', arch=arch, ckpt=ckpt, dp=0.1, lr=2e-4, wd=1e-4,
            epochs=12, detector='MaskRCNN', neck=[64, 128, 320, 512],
            ms_crop=False, out=(0, 1, 2, 3))
        out[f'semfpn_inline_pvt_{k}_ade20k'] = dict(
            type='InLinePVT', arch=arch, ckpt=ckpt, dp=0.1, lr=2e-4, wd=1e-4,
            iters=40000)
    for k, (arch, dims) in SWIN.items():
        ckpt = f'checkpoints/inline_swin_{k}.pth'
        dp = 0.2 if k == 't' else 0.3
        for sched, epochs in (('1x', 12), ('3x', 36)):
            sfx = '' if sched == '1x' else '_3x'
            out[f'maskrcnn_inline_swin_{k}{sfx}_coco'] = dict(
                type='InLineSwin', arch=arch, ckpt=ckpt, dp=dp, lr=1e-4,
                wd=0.05, epochs=epochs, detector='MaskRCNN', neck=dims,
                ms_crop=True, out=(0, 1, 2, 3))
        out[f'upernet_inline_swin_{k}_ade20k'] = dict(
            type='InLineSwin', arch=arch, ckpt=ckpt, dp=0.3, lr=6e-5,
            wd=0.01, iters=160000, head=dims)
    for stem, paramwise_cfg in LAYER_DECAY.items():
        out[f'{stem}_layer_decay'] = dict(out[stem], inherits=stem,
                                          layer_decay=paramwise_cfg)
    return out


#: The layer-wise lr decay examples: the config each inherits -> the
#: decay keys of its paramwise_cfg (README "Layer-wise learning-rate decay").
LAYER_DECAY = {
    'maskrcnn_l2vit_t_coco': dict(decay_rate=0.95, decay_type='layer_wise',
                                  flat_decay_mult=0.),
    'upernet_l2vit_t_ade20k': dict(decay_rate=0.9, decay_type='stage_wise',
                                   flat_decay_mult=0.),
}


EXPECTED = expected_configs()
DEMO_CONFIGS = sorted(
    f'{model}_{family}_demo{twin}'
    for model, family in [('maskrcnn', 'l2vit'), ('maskrcnn', 'inline_pvt'),
                          ('maskrcnn', 'inline_swin'), ('upernet', 'l2vit'),
                          ('upernet', 'inline_swin'),
                          ('semfpn', 'inline_pvt')]
    for twin in ('', '_scratch'))


def test_shipped_configs_are_exactly_the_expected_set():
    shipped = sorted(p.stem for p in CONFIGS.glob('*.py'))
    assert shipped == sorted(EXPECTED)
    assert 'maskrcnn_l2vit_t_coco' in shipped
    assert sorted(p.stem for p in (CONFIGS / 'demo').glob('*.py')) == \
        DEMO_CONFIGS


def _tiny_twin(stem: str) -> str:
    """The T config of the same model and schedule, e.g.
    ``maskrcnn_l2vit_t_3x_coco`` for ``maskrcnn_l2vit_b_3x_coco``."""
    return re.sub(r'_[smlb](?=(_3x)?_(coco|ade20k)$)', '_t', stem)


def _declared_base(stem: str):
    """The ``_base_`` a config file assigns (read, not executed)."""
    tree = ast.parse((CONFIGS / f'{stem}.py').read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, 'id', None) == '_base_' for t in node.targets):
            return ast.literal_eval(node.value)
    return None


@pytest.mark.parametrize(
    'stem', [s for s in sorted(EXPECTED) if _tiny_twin(s) != s])
def test_larger_sizes_inherit_their_tiny_config(stem):
    """S/B (and M/L) configs restate only what the size changes."""
    twin = _tiny_twin(stem)
    assert twin in EXPECTED
    assert _declared_base(stem) == f'./{twin}.py'


def _load(stem: str) -> Config:
    path = CONFIGS / f'{stem}.py'
    if not path.exists():
        path = CONFIGS / 'demo' / f'{stem}.py'
    return Config.fromfile(str(path))


def _milestones_and_length(cfg: Config) -> Tuple[List[int], int]:
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
    return steps[0].milestones, cfg.train_cfg.max_epochs


@pytest.mark.parametrize('stem', sorted(EXPECTED))
def test_config_recipe(stem):
    """The recipe of each config (l2vit.md §4, paper_numbers.md)."""
    exp = EXPECTED[stem]
    cfg = _load(stem)
    assert 'mmdet_l2vit' in cfg.custom_imports.imports
    assert cfg.custom_imports.allow_failed_imports is False
    assert cfg.auto_scale_lr.base_batch_size == 16
    backbone = cfg.model.backbone
    assert backbone.type == exp['type']
    assert backbone.arch == exp['arch']
    assert backbone.drop_path_rate == pytest.approx(exp['dp'])
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint=exp['ckpt'])
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW'
    assert optimizer.lr == pytest.approx(exp['lr'])
    assert optimizer.weight_decay == pytest.approx(exp['wd'])
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # --amp switches it
    if 'layer_decay' in exp:
        assert _declared_base(stem) == f'./{exp["inherits"]}.py'
        assert cfg.optim_wrapper.constructor == \
            'BackboneLayerDecayOptimWrapperConstructor'
        assert cfg.optim_wrapper.paramwise_cfg == exp['layer_decay']
    else:
        assert 'constructor' not in cfg.optim_wrapper
    readme = (ROOT / 'README.md').read_text()
    assert Path(exp['ckpt']).name in readme, 'checkpoint not documented'
    if 'epochs' in exp:  # detection
        assert cfg.default_scope == 'mmdet'
        assert cfg.model.type == exp['detector']
        assert tuple(backbone.out_indices) == exp['out']
        assert cfg.model.neck.in_channels == exp['neck']
        milestones, epochs = _milestones_and_length(cfg)
        assert epochs == exp['epochs']
        assert milestones == ([8, 11] if epochs == 12 else [27, 33])
        assert cfg.train_dataloader.batch_size == 2
        pipeline = [t.type for t in cfg.train_dataloader.dataset.pipeline]
        assert ('RandomChoice' in pipeline) == exp['ms_crop']
        if exp['detector'] == 'RetinaNet':
            assert cfg.model.neck.start_level == 0
            assert cfg.model.neck.add_extra_convs == 'on_input'
        warmup = cfg.param_scheduler[0]
        assert warmup.type == 'LinearLR' and warmup.end in (500, 1000)
        assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    else:  # segmentation
        assert cfg.default_scope == 'mmseg'
        assert cfg.train_cfg.max_iters == exp['iters']
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.model.data_preprocessor.size == (512, 512)
        assert cfg.train_dataloader.dataset.data_root == \
            'data/ade/ADEChallengeData2016'
        pipeline = [t.type for t in cfg.train_dataloader.dataset.pipeline]
        assert pipeline.index('CheckSegLabels') == \
            pipeline.index('LoadAnnotations') + 1
        if 'head' in exp:  # UperNet
            assert cfg.model.decode_head.type == 'UPerHead'
            assert cfg.model.decode_head.in_channels == exp['head']
            aux = cfg.model.auxiliary_head
            assert aux.in_index == 2 and aux.in_channels == exp['head'][2]
            assert aux.loss_decode.loss_weight == pytest.approx(0.4)
            warmup, poly = cfg.param_scheduler
            assert warmup.end == 1500 and poly.power == pytest.approx(1.0)
        else:  # Semantic FPN
            assert cfg.model.decode_head.type == 'FPNHead'
            assert cfg.param_scheduler[-1].power == pytest.approx(0.9)


def _registered(scope: str, name: str) -> bool:
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.get(name) is not None


def _build(cfg: Config):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    require_toolbox(f'{cfg.default_scope}.models')
    backbone_type = cfg.model.backbone.type
    if not _registered(cfg.default_scope, backbone_type):
        pytest.skip(f'backbone {backbone_type} is not registered in '
                    f'{cfg.default_scope}.MODELS (its implementation is '
                    'missing)')
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def _stage_dims(stem: str) -> List[int]:
    exp = EXPECTED[stem]
    stem = exp.get('inherits', stem)
    if exp['type'] == 'InLinePVT':
        return [64, 128, 320, 512]
    size = stem.split('_')[-2] if stem.endswith('ade20k') else \
        re.search(r'_([tsb])(_3x)?_coco$', stem).group(1)
    return (L2VIT if exp['type'] == 'L2ViT' else SWIN)[size][1]


@pytest.mark.parametrize('stem', sorted(EXPECTED) + DEMO_CONFIGS)
def test_config_builds_model(stem):
    cfg = _load(stem)
    model = _build(cfg)
    backbone = model.backbone
    assert type(backbone).__name__ == cfg.model.backbone.type
    assert tuple(backbone.out_indices) == tuple(
        cfg.model.backbone.get('out_indices', (0, 1, 2, 3)))
    if stem in EXPECTED:
        assert list(backbone.embed_dims) == _stage_dims(stem)
    else:  # the demos' reduced backbones
        assert list(backbone.embed_dims) == [32, 64, 128, 256]
        pretrained = cfg.model.backbone.init_cfg
        if stem.endswith('_scratch'):
            assert pretrained is None
        else:  # the demo classifier of the family (tools/pretrain_demo.py)
            name = stem.split('_', 1)[1][:-len('_demo')]
            assert pretrained == dict(
                type='Pretrained',
                checkpoint=f'work_dirs/demo_pretrain/{name}_demo_cls.pth')


# ---- one detector and one segmentor per family: a step and a predict -----

SMOKE = [('maskrcnn_l2vit_t_coco', 'upernet_l2vit_t_ade20k'),
         ('maskrcnn_inline_pvt_t_coco', 'semfpn_inline_pvt_t_ade20k'),
         ('maskrcnn_inline_swin_t_coco', 'upernet_inline_swin_t_ade20k')]


def _det_batch(num_classes: int) -> dict:
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    return demo_mm_inputs(batch_size=2, image_shapes=[(3, 96, 128),
                                                      (3, 112, 80)],
                          num_items=[3, 2], num_classes=num_classes,
                          with_mask=True)


def _seg_batch(num_classes: int, size: Tuple[int, int]) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for h, w in [size, size]:  # mmseg predicts same-size batches only
        inputs.append(torch.randint(0, 256, (3, h, w), generator=gen,
                                    dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w),
                                             ori_shape=(h, w),
                                             pad_shape=size))
        labels = torch.randint(0, num_classes, (1, h, w), generator=gen)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _train_step_and_predict(cfg: Config, batch: dict):
    from mmengine.optim import build_optim_wrapper
    model = _build(cfg)
    model.init_weights()  # init_cfg=None: training from scratch
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    model.train()
    log_vars = model.train_step(batch, optim_wrapper)
    assert log_vars['loss'].isfinite()
    assert all(v.isfinite() for v in log_vars.values())
    changed = sum(not torch.equal(b, p.detach())
                  for b, p in zip(before, model.backbone.parameters()))
    assert changed > 0.9 * len(before), 'the step did not train the backbone'
    model.eval()
    with torch.no_grad():
        return model.test_step(batch)


@pytest.mark.parametrize('det_stem,seg_stem', SMOKE,
                         ids=[s[0].split('_', 1)[1][:-7] for s in SMOKE])
def test_family_detector_and_segmentor_train_and_predict(det_stem, seg_stem):
    # One thread: many small ops, and with two threads a shared 2-core
    # machine stalls on thread barriers (the conftest fixture restores it).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    det_cfg = _load(det_stem)
    det_cfg.model.backbone.init_cfg = None
    det_cfg.model.backbone.drop_path_rate = 0.0
    batch = _det_batch(num_classes=80)
    results = _train_step_and_predict(det_cfg, batch)
    assert len(results) == 2
    for res, sample in zip(results, batch['data_samples']):
        pred = res.pred_instances
        n = len(pred)
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, )
        assert pred.masks.shape[1:] == sample.ori_shape
        assert bool((pred.labels < 80).all())

    seg_cfg = _load(seg_stem)
    seg_cfg.model.backbone.init_cfg = None
    seg_cfg.model.backbone.drop_path_rate = 0.0
    seg_cfg.model.data_preprocessor.size = (96, 128)
    batch = _seg_batch(num_classes=150, size=(96, 128))
    results = _train_step_and_predict(seg_cfg, batch)
    for res, sample in zip(results, batch['data_samples']):
        assert tuple(res.pred_sem_seg.data.shape) == (1, ) + \
            sample.ori_shape
        assert int(res.pred_sem_seg.data.max()) < 150
        assert res.seg_logits.data.shape[0] == 150


def test_readme_lists_every_config():
    readme = (ROOT / 'README.md').read_text()
    missing = [s for s in sorted(EXPECTED) + DEMO_CONFIGS
               if f'{s}.py' not in readme]
    assert not missing, f'configs missing from the README: {missing}'


def test_model_index_lists_every_config():
    import yaml
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    assert index['Import'] == ['configs/metafile.yml']
    meta = yaml.safe_load((ROOT / 'configs' / 'metafile.yml').read_text())
    assert {c['Name'] for c in meta['Collections']} == {'L2ViT', 'InLine'}
    models = {m['Name']: m for m in meta['Models']}
    assert sorted(models) == sorted(EXPECTED)
    for stem, model in models.items():
        assert model['Config'] == f'configs/{stem}.py'
        assert model['In Collection'] == (
            'L2ViT' if EXPECTED[stem]['type'] == 'L2ViT' else 'InLine')
        assert model['Metadata']['Pretrained'] == EXPECTED[stem]['ckpt']
        assert model['Metadata']['Batch Size'] == 16
        # nothing was reproduced: no invented results or weights
        assert 'Results' not in model and 'Weights' not in model
