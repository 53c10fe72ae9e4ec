"""The users' chain on the embedded data, in short: a few pretraining
iterations write an official-layout classification checkpoint, the demo
configs' backbones import it strictly through ``init_cfg`` (with the
expected report), a few fine-tuning iterations start from it; and the bad
inputs of that chain get one clear error."""
import argparse
import collections
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmdet_l2vit.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                    read_checkpoint_file)
from mmdet_l2vit.engine.pretrain import pretrain_demo_classifier

ROOT = Path(__file__).resolve().parents[1]
#: family -> (timm name, demo config of the dense model, official layout,
#: keys the backbone drops on import).
FAMILIES = {
    'L2ViT': ('l2vit_demo', 'maskrcnn_l2vit_demo',
              {'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'},
              ['norm.weight', 'norm.bias', 'head.weight', 'head.bias']),
    'InLinePVT': ('inline_pvt_demo', 'semfpn_inline_pvt_demo',
                  {'model', 'optimizer', 'lr_scheduler', 'max_accuracy',
                   'epoch', 'config'}, ['head.weight', 'head.bias']),
    'InLineSwin': ('inline_swin_demo', 'upernet_inline_swin_demo',
                   {'model', 'optimizer', 'lr_scheduler', 'max_accuracy',
                    'epoch', 'config'},
                   ['layers.3.blocks.0.attn.relative_position_index',
                    'layers.3.blocks.1.attn.relative_position_index',
                    'norm.weight', 'norm.bias', 'head.weight', 'head.bias']),
}


@pytest.fixture(scope='module')
def demo_checkpoints(tmp_path_factory):
    """family -> a checkpoint of 3 pretraining iterations on 20 crops."""
    out = tmp_path_factory.mktemp('demo_pretrain')
    paths = {}
    for family, (name, _, _, _) in FAMILIES.items():
        path = out / f'{name}_cls.pth'
        result = pretrain_demo_classifier(
            name, str(path), iters=3, batch_size=4, num_train=20,
            num_heldout=10, warmup_iters=1, log_interval=1, num_threads=1)
        assert result['family'] == family and path.is_file()
        paths[family] = path
    return paths


def _demo_backbone(stem: str, checkpoint: Path, **overrides):
    """The dense backbone of a demo config, reading ``checkpoint``."""
    from mmdet_l2vit.convert import BACKBONE_CLASSES
    cfg = Config.fromfile(str(ROOT / 'configs' / 'demo' / f'{stem}.py'))
    kwargs = dict(cfg.model.backbone)
    cls = BACKBONE_CLASSES[kwargs.pop('type')]
    kwargs['init_cfg'] = dict(type='Pretrained', checkpoint=str(checkpoint))
    kwargs.update(overrides)
    return cls(**kwargs)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_pretraining_writes_the_official_layout(demo_checkpoints, family):
    name, _, layout, _ = FAMILIES[family]
    raw = read_checkpoint_file(str(demo_checkpoints[family]))
    assert set(raw) == layout
    assert isinstance(raw['epoch'], int)
    if family == 'L2ViT':
        assert isinstance(raw['args'], argparse.Namespace)
        assert raw['args'].model == name and raw['args'].nb_classes == 5
        assert raw['model'].keys() == raw['model_ema'].keys()
    else:  # yacs' CfgNode, read without yacs as an OrderedDict
        assert isinstance(raw['config'], collections.OrderedDict)
        assert raw['config']['MODEL']['NUM_CLASSES'] == 5
        assert 0. <= raw['max_accuracy'] <= 100.
    assert raw['model']['head.weight'].shape[0] == 5
    assert raw['optimizer']['state'], 'the optimizer never stepped'


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_demo_backbone_imports_it_strictly(demo_checkpoints, family):
    """The demo config's backbone loads the file through ``init_cfg``:
    every backbone tensor comes from the checkpoint, and exactly the
    classifier's own keys are dropped."""
    _, stem, _, dropped = FAMILIES[family]
    path = demo_checkpoints[family]
    backbone = _demo_backbone(stem, path)
    converted = backbone.load_pretrained(str(path))
    assert converted.dropped == dropped
    model = read_checkpoint_file(str(path))['model']
    own = backbone.state_dict()
    for key in converted.kept:
        assert torch.equal(own[key], model[key]), key
    assert set(own) == set(converted.kept) | set(converted.created)


def test_fine_tuning_starts_from_it(demo_checkpoints, tmp_path):
    """Two iterations of the demo Mask R-CNN through mmengine's Runner, the
    backbone initialised from the pretraining checkpoint (the log reports
    the import, and the stem starts at the pretrained weights)."""
    from mmengine.runner import Runner

    from mmdet_l2vit.datasets import generate_demo_data
    data = tmp_path / 'data'
    generate_demo_data(str(data), seed=0, sizes={'train': 4, 'val': 2})
    path = demo_checkpoints['L2ViT']
    cfg_file = tmp_path / 'finetune.py'
    cfg_file.write_text(textwrap.dedent(f"""
        _base_ = [{str(ROOT / 'configs/demo/maskrcnn_l2vit_demo.py')!r}]
        model = dict(backbone=dict(init_cfg=dict(checkpoint={str(path)!r})))
        train_dataloader = dict(batch_size=2, num_workers=0,
                                persistent_workers=False,
                                dataset=dict(data_root={str(data / 'coco')
                                                        + '/'!r}))
        val_dataloader = None
        val_cfg = None
        val_evaluator = None
        test_dataloader = None
        test_cfg = None
        test_evaluator = None
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                         max_iters=2)
        param_scheduler = []
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval=2))
        work_dir = {str(tmp_path / 'work')!r}
    """))
    cfg = Config.fromfile(str(cfg_file))
    runner = Runner.from_cfg(cfg)
    stem_key = 'downsample_layers.0.proj.proj.0.weight'
    pretrained = read_checkpoint_file(str(path))['model'][stem_key]
    runner.model.init_weights()
    assert torch.equal(runner.model.backbone.state_dict()[stem_key],
                       pretrained)
    runner.train()
    assert runner.iter == 2
    log = next((tmp_path / 'work').glob('*/*.log')).read_text()
    assert f'{path} [model]: 196 kept' in log
    trained = runner.model.backbone.state_dict()[stem_key]
    assert not torch.equal(trained, pretrained)


def test_classifier_of_another_family_is_refused(demo_checkpoints):
    path = demo_checkpoints['L2ViT']
    backbone = _demo_backbone('semfpn_inline_pvt_demo', path)
    with pytest.raises(CheckpointError) as info:
        backbone.init_weights()
    message = str(info.value)
    assert str(path) in message
    assert 'looks like a L2ViT model, not InLinePVT' in message
    assert 'use the checkpoint that matches the backbone type' in message


def test_reduced_checkpoint_for_a_full_size_arch_is_refused(
        demo_checkpoints):
    path = demo_checkpoints['InLineSwin']
    backbone = _demo_backbone('upernet_inline_swin_demo', path, arch='tiny')
    with pytest.raises(CheckpointError) as info:
        backbone.init_weights()
    message = str(info.value)
    assert str(path) in message and 'mis-shaped keys' in message
    assert 'check `arch` against the checkpoint' in message


class NotAllowed:
    """A class no checkpoint format needs (pickled into ``args``)."""


def test_args_that_cannot_be_unpickled_safely_are_refused(
        demo_checkpoints, tmp_path):
    raw = read_checkpoint_file(str(demo_checkpoints['L2ViT']))
    raw['args'].output_dir = NotAllowed()
    path = tmp_path / 'unsafe_args.pth'
    torch.save(raw, path)
    backbone = _demo_backbone('maskrcnn_l2vit_demo', path)
    with pytest.raises(UnsafeCheckpointError) as info:
        backbone.init_weights()
    message = str(info.value)
    assert str(path) in message and 'NotAllowed' in message
    assert 'trust_pickle=True' in message
    assert 'tools/convert_checkpoint.py' in message
    assert 'weights_only=False' not in message


def test_missing_demo_classifier_names_the_command(tmp_path, monkeypatch):
    """A demo config whose classifier was not pretrained yet stops before
    anything is built, with the command that writes it."""
    from mmdet_l2vit.engine.preflight import (CheckpointNotFoundError,
                                              check_checkpoint_paths)
    monkeypatch.chdir(tmp_path)  # no work_dirs/demo_pretrain here
    cfg = Config.fromfile(
        str(ROOT / 'configs' / 'demo' / 'upernet_inline_swin_demo.py'))
    with pytest.raises(CheckpointNotFoundError) as info:
        check_checkpoint_paths(cfg)
    message = str(info.value)
    assert 'work_dirs/demo_pretrain/inline_swin_demo_cls.pth' in message
    assert 'tools/pretrain_demo.py --model inline_swin_demo' in message
    scratch = Config.fromfile(
        str(ROOT / 'configs' / 'demo' / 'upernet_inline_swin_demo_scratch.py'))
    check_checkpoint_paths(scratch)  # nothing to read
