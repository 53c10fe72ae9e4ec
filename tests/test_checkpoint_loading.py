"""Checkpoint reading, conversion and bad-input errors (L²ViT), and the
weights-only allow-lists for official and mmengine checkpoints."""
import argparse
import collections
import contextlib
import importlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
from torch import nn
from torch.utils.data import Dataset

from mmdet_l2vit import L2ViT
from mmdet_l2vit.checkpoint import (OFFICIAL_SAFE_GLOBALS, CheckpointError,
                                    UnsafeCheckpointError,
                                    read_checkpoint_file)
from mmdet_l2vit.engine import RNGStateHook
from mmdet_l2vit.engine.safe_globals import (HISTORY_BUFFER_STATISTICS,
                                             history_buffer_statistic,
                                             mmengine_safe_globals,
                                             register_mmengine_safe_globals)

REPO = Path(__file__).resolve().parents[1]
R1_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
               num_heads=[1, 2, 4, 8])


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


@pytest.mark.parametrize('arch, match', [
    ('huge', 'unknown arch'),
    (dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2]), 'malformed'),
    (dict(embed_dims=[16, 32, 64], depths=[2, 2, 2], num_heads=[1, 2, 4]),
     'must be 4 positive ints'),
    (dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
          num_heads=[3, 2, 4, 8]), 'not divisible'),
    (dict(R1_ARCH, windowsize=7), 'unknown keys'),
])
def test_bad_arch_is_rejected(arch, match):
    with pytest.raises(ValueError, match=match):
        L2ViT(arch=arch)


def test_pretrained_argument_rules(tmp_path):
    with pytest.raises(TypeError, match='pretrained must be a str'):
        L2ViT(arch=R1_ARCH, pretrained=123)
    with pytest.raises(AssertionError, match='cannot be set at the same'):
        L2ViT(arch=R1_ARCH, pretrained='a.pth',
              init_cfg=pretrained('a.pth'))
    with pytest.warns(DeprecationWarning):
        model = L2ViT(arch=R1_ARCH, pretrained='a.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='a.pth')


def test_missing_checkpoint_file(tmp_path):
    model = L2ViT(arch=R1_ARCH, init_cfg=pretrained(tmp_path / 'none.pth'))
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        model.init_weights()


def test_truncated_and_empty_files(tmp_path, reference_file):
    data = reference_file('l2vit_r1_cls.pth').read_bytes()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated, corrupt'):
        L2ViT(arch=R1_ARCH, init_cfg=pretrained(truncated)).init_weights()
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        read_checkpoint_file(str(empty))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint at all' * 10)
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        read_checkpoint_file(str(garbage))


def test_inline_checkpoint_is_refused_with_its_family(reference_file):
    model = L2ViT(arch=R1_ARCH, init_cfg=pretrained(
        reference_file('inline_pvt_r1_cls.pth')))
    with pytest.raises(CheckpointError, match='looks like a InLinePVT'):
        model.init_weights()


def test_swin_checkpoint_is_refused_with_its_family(tmp_path):
    swin = {
        'patch_embed.proj.weight': torch.zeros(96, 3, 4, 4),
        'layers.0.blocks.0.attn.relative_position_bias_table':
        torch.zeros(169, 3),
        'layers.0.blocks.0.attn.relative_position_index':
        torch.zeros(49, 49, dtype=torch.long),
    }
    path = tmp_path / 'swin_tiny_patch4_window7_224.pth'
    torch.save({'model': swin}, path)
    with pytest.raises(CheckpointError, match=r'Swin \(official\)'):
        L2ViT(arch=R1_ARCH, init_cfg=pretrained(path)).init_weights()


def test_other_size_of_l2vit_is_refused_naming_shapes(reference_file):
    model = L2ViT(arch=dict(R1_ARCH, embed_dims=[32, 64, 128, 256]),
                  init_cfg=pretrained(reference_file('l2vit_r1_cls.pth')))
    with pytest.raises(CheckpointError, match='mis-shaped keys.*check `arch`'):
        model.init_weights()


def test_unexpected_and_missing_keys_are_named(tmp_path, reference_file):
    raw = read_checkpoint_file(str(reference_file('l2vit_r1_cls.pth')))
    state_dict = dict(raw['model'])
    state_dict['stages.0.0.attn.relative_position_bias_table'] = torch.zeros(1)
    del state_dict['stages.3.1.attn.temperature']
    path = tmp_path / 'edited.pth'
    torch.save({'model': state_dict}, path)
    with pytest.raises(CheckpointError) as info:
        L2ViT(arch=R1_ARCH, init_cfg=pretrained(path)).init_weights()
    message = str(info.value)
    assert '1 missing keys [stages.3.1.attn.temperature]' in message
    assert 'unexpected keys [stages.0.0.attn.relative_position_bias_table]' \
        in message


class Payload:
    """Unpickling this would create a file: the safe reader must refuse."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target), ))


@pytest.mark.parametrize('zip_format', [True, False])
def test_foreign_pickled_code_is_not_executed(tmp_path, zip_format):
    marker = tmp_path / 'executed'
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'args': Payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint_file(str(path))
    message = str(info.value)
    assert str(path) in message
    assert '`pathlib.Path' in message  # the class it wanted
    assert '`trust_pickle=True`' in message and '--trust-pickle' in message
    assert not marker.exists()


@pytest.mark.parametrize('name, entry, cls', [
    ('l2vit_r1_cls.pth', 'args', argparse.Namespace),
    ('inline_pvt_r1_cls.pth', 'config', collections.OrderedDict),
    ('inline_swin_r1_cls.pth', 'config', collections.OrderedDict),
])
def test_official_files_read_weights_only(reference_file, name, entry, cls):
    """The reader allows Namespace / CfgNode (and nothing else), without
    changing the allow-list; importing the package registered exactly these
    two for timm's weights-only loader, so plain ``torch.load`` reads the
    same."""
    path = str(reference_file(name))
    before = set(map(repr, torch.serialization.get_safe_globals()))
    raw = read_checkpoint_file(path)
    assert type(raw[entry]) is cls
    assert all(isinstance(v, torch.Tensor) for v in raw['model'].values())
    assert set(map(repr, torch.serialization.get_safe_globals())) == before
    allowed = torch.serialization.get_safe_globals()
    assert all(g in allowed for g in OFFICIAL_SAFE_GLOBALS)
    plain = torch.load(path, weights_only=True)
    assert type(plain[entry]) is cls and plain.keys() == raw.keys()
    if entry == 'config':
        assert raw['config']['MODEL']['TYPE']  # nested CfgNodes as dicts
        trusted = read_checkpoint_file(path, trust_pickle=True)
        assert trusted['config'] == raw['config']


@contextlib.contextmanager
def global_allow_list(entries):
    """Run the block with exactly ``entries`` allowed globally."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(entries)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_allow_listing_keeps_user_safe_globals(reference_file):
    """Leaving the load site does not remove what a user allowed."""
    with global_allow_list([argparse.Namespace]):
        read_checkpoint_file(str(reference_file('l2vit_r1_cls.pth')))
        assert torch.serialization.get_safe_globals() == [argparse.Namespace]


def test_yacs_config_reads_without_yacs(reference_file, monkeypatch):
    monkeypatch.setitem(sys.modules, 'yacs', None)  # as if not installed
    monkeypatch.setitem(sys.modules, 'yacs.config', None)
    with pytest.raises(ImportError):
        import yacs  # noqa: F401
    raw = read_checkpoint_file(str(reference_file('inline_swin_r1_cls.pth')))
    assert isinstance(raw['config'], dict)
    assert raw['epoch'] == 300


def test_convert_tool_writes_tensor_only_file(tmp_path, reference_file):
    dst = tmp_path / 'sub' / 'l2vit_r1_backbone.pth'
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'convert_checkpoint.py'),
         str(reference_file('l2vit_r1_cls.pth')), str(dst)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert 'kept    196 keys' in result.stdout
    assert "dropped 4 keys: ['norm.weight', 'norm.bias', 'head.weight', " \
        "'head.bias']" in result.stdout
    assert 'new     8 keys' in result.stdout
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['type'] == 'L2ViT'
    official = read_checkpoint_file(str(
        reference_file('l2vit_r1_cls.pth')))['model']
    # The converted file loads (strictly) into a detector-style backbone.
    model = L2ViT(arch=R1_ARCH, out_indices=(1, 2, 3),
                  init_cfg=pretrained(dst))
    model.init_weights()
    for key, value in model.state_dict().items():
        if key in official:
            assert torch.equal(value, official[key]), key


def test_convert_tool_reports_errors(tmp_path, reference_file):
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'convert_checkpoint.py'),
         str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth')],
        capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert 'checkpoint file not found' in result.stderr
    assert not (tmp_path / 'out.pth').exists()


class TinyModel(BaseModel):
    """A one-layer model for a real (CPU) mmengine runner."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='loss'):
        out = self.linear(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=((out - 1)**2).mean())
        return out


class TinyDataset(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.full((2, ), float(index)))


def tiny_runner(work_dir, name, max_iters, **kwargs):
    return Runner(
        model=TinyModel(), work_dir=str(work_dir), experiment_name=name,
        train_dataloader=dict(
            dataset=TinyDataset(), batch_size=2, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1],
                             by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(
            type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=[RNGStateHook()],
        randomness=dict(seed=0), **kwargs)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by a real mmengine runner (2 CPU iterations)."""
    work_dir = tmp_path_factory.mktemp('runner')
    tiny_runner(work_dir, 'ckpt_writer', max_iters=2).train()
    return work_dir / 'iter_2.pth'


def test_runner_checkpoint_needs_the_allow_list(runner_checkpoint):
    wanted = set(torch.serialization.get_unsafe_globals_in_checkpoint(
        str(runner_checkpoint)))
    assert not wanted  # every GLOBAL of the file is allowed ...
    entries = {g[1] if isinstance(g, tuple) else
               f'{g.__module__}.{g.__qualname__}'
               for g in mmengine_safe_globals()}
    assert {'builtins.getattr', 'numpy.dtype',
            'mmengine.logging.history_buffer.HistoryBuffer'} <= entries
    with global_allow_list([]):  # ... and needed: torch refuses without
        assert 'builtins.getattr' in \
            torch.serialization.get_unsafe_globals_in_checkpoint(
                str(runner_checkpoint))
        with pytest.raises(pickle.UnpicklingError):
            torch.load(runner_checkpoint, weights_only=True)
        register_mmengine_safe_globals()  # what `import mmdet_l2vit` does
        assert torch.load(runner_checkpoint, weights_only=True)['meta']


def test_runner_checkpoint_loads_with_mmengine(runner_checkpoint):
    """mmengine's own, unmodified loader reads it (weights_only=True)."""
    assert CheckpointLoader._schemes[''] is load_from_local
    by_torch = torch.load(runner_checkpoint, weights_only=True)
    by_mmengine = CheckpointLoader.load_checkpoint(str(runner_checkpoint),
                                                   map_location='cpu')
    for loaded in (by_torch, by_mmengine):
        loss = loaded['message_hub']['log_scalars']['train/loss']
        assert isinstance(loss, HistoryBuffer)
        assert loss.statistics('mean') == loss.mean() > 0
        assert loaded['meta']['iter'] == 2
    model = TinyModel()
    load_checkpoint(model, str(runner_checkpoint), map_location='cpu')
    assert torch.equal(model.linear.weight,
                       by_torch['state_dict']['linear.weight'])


def test_runner_resumes_from_its_checkpoint(runner_checkpoint, tmp_path):
    """``--resume``: a second runner continues at iteration 2."""
    runner = tiny_runner(tmp_path, 'ckpt_resumer', max_iters=3,
                         resume=True, load_from=str(runner_checkpoint))
    runner.train()
    assert runner.iter == 3
    history = runner.message_hub.get_scalar('train/loss')
    assert len(history.data[0]) == 3  # 2 resumed + 1 new


def test_numpy_values_load_weights_only(tmp_path):
    """Arrays, scalars and dtypes mmengine may keep in ``runtime_info``."""
    values = dict(empty=np.array([]), ints=np.arange(3, dtype=np.int32),
                  half=np.ones(2, np.float16), flags=np.array([True]),
                  scalar=np.float32(1.5), count=np.int64(7),
                  dtype=np.dtype('uint8'))
    path = tmp_path / 'numpy.pth'
    torch.save({'message_hub': {'runtime_info': values}}, path)
    loaded = torch.load(path, weights_only=True)['message_hub']
    for key, value in values.items():
        assert type(loaded['runtime_info'][key]) is type(value), key
        assert np.array_equal(loaded['runtime_info'][key], value), key


def test_evil_file_is_refused_by_mmengine_loader(tmp_path):
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': Payload(tmp_path / 'ran')}, evil)
    with pytest.raises(pickle.UnpicklingError, match='pathlib'):
        CheckpointLoader.load_checkpoint(str(evil))
    assert not (tmp_path / 'ran').exists()


SNAPSHOT = r"""
import json, sys
import torch
import mmengine.runner.checkpoint as ckpt


def snapshot():
    def name(f):
        qualname = getattr(f, '__qualname__', repr(f))
        return f'{getattr(f, "__module__", "?")}.{qualname}'
    functions = {k: (id(v), name(v)) for k, v in vars(ckpt).items()
                 if callable(v)}
    functions.update({f'CheckpointLoader.{k}': (id(v), name(v))
                      for k, v in vars(ckpt.CheckpointLoader).items()})
    functions.update({'torch.load': (id(torch.load), name(torch.load))})
    schemes = {p: (id(f), name(f))
               for p, f in ckpt.CheckpointLoader._schemes.items()}
    return dict(functions=functions, schemes=schemes)


before = snapshot()
if sys.argv[1] == 'import':
    import mmdet_l2vit  # noqa: F401
after = snapshot()
print(json.dumps(dict(same_objects=before == after, schemes={
    p: n for p, (_, n) in after['schemes'].items()})))
"""


def test_import_changes_no_function_of_mmengine():
    def run(mode):
        result = subprocess.run([sys.executable, '-c', SNAPSHOT, mode],
                                capture_output=True, text=True, cwd=REPO,
                                check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    plain, imported = run('plain'), run('import')
    assert imported['same_objects'], 'import mmdet_l2vit replaced a function'
    assert imported['schemes'] == plain['schemes']
    assert plain['schemes'][''] == \
        'mmengine.runner.checkpoint.load_from_local'


class Attribute:
    """Pickles as ``getattr(owner, name)``."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return (getattr, (self.owner, self.name))

    def __call__(self, *args):  # pickle wants a callable to reduce with
        raise AssertionError('never called')


class Call:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _ModulePickler(pickle.Pickler):
    """Pickles modules as ``importlib.import_module(name)``."""

    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):
            return (importlib.import_module, (obj.__name__, ))
        return NotImplemented


MODULE_PICKLE = types.ModuleType('module_pickle')
MODULE_PICKLE.Pickler, MODULE_PICKLE.dump = _ModulePickler, pickle.dump


@pytest.mark.parametrize('payload', ['os.system', 'getattr(os, system)'])
def test_allow_list_still_refuses_code(tmp_path, payload):
    """With the global allow-list, torch still refuses code execution."""
    marker = tmp_path / 'ran'
    command = f'touch {marker}'
    if payload == 'os.system':
        evil = Call(os.system, command)
    else:
        evil = Call(Attribute(os, 'system'), command)
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': evil}, path,
               pickle_module=MODULE_PICKLE)
    with pytest.raises(pickle.UnpicklingError, match='Weights only'):
        torch.load(path, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(UnsafeCheckpointError, match='system|import_module'):
        read_checkpoint_file(str(path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: the file is real
    assert marker.exists()


@pytest.mark.parametrize('owner, name', [
    (os, 'system'), (HistoryBuffer, '__init__'),
    (HistoryBuffer, 'register_statistics'), (HistoryBuffer, '__class__'),
    (np, 'load'), (Path, 'touch')])
def test_getattr_stand_in_serves_only_statistics(owner, name):
    for statistic in HISTORY_BUFFER_STATISTICS:
        assert history_buffer_statistic(HistoryBuffer, statistic) is \
            getattr(HistoryBuffer, statistic)
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        history_buffer_statistic(owner, name)
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        history_buffer_statistic(HistoryBuffer, 'min', None)


@pytest.mark.parametrize('evil, match', [
    (Attribute(HistoryBuffer, '__init__'), 'refusing getattr'),
    (Attribute(HistoryBuffer, 'update'), 'refusing getattr'),
    # a served statistic cannot be called while unpickling
    (Call(Attribute(HistoryBuffer, 'min'), HistoryBuffer([1.0], [1])),
     'reduce for unrecognized function'),
])
def test_getattr_stand_in_in_files(tmp_path, evil, match):
    path = tmp_path / 'evil.pth'
    torch.save({'x': evil}, path)
    with pytest.raises(pickle.UnpicklingError, match=match):
        torch.load(path, weights_only=True)
    with pytest.raises(UnsafeCheckpointError, match=match):
        read_checkpoint_file(str(path))


def test_one_channel_image_is_rejected():
    model = L2ViT(arch=R1_ARCH).eval()
    with pytest.raises(ValueError, match=r'expects images of shape \(B, 3'):
        model(torch.randn(1, 1, 64, 64))

