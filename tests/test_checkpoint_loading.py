"""Checkpoint reading, conversion and bad-input errors (L²ViT)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from mmdet_l2vit import L2ViT
from mmdet_l2vit.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                    read_checkpoint_file)

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


def test_foreign_pickled_code_is_not_executed(tmp_path):
    marker = tmp_path / 'executed'
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'args': Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match='--trust-pickle'):
        read_checkpoint_file(str(path))
    assert not marker.exists()


def test_yacs_config_reads_without_yacs(reference_file):
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


def test_mmengine_checkpoints_load_on_new_torch(tmp_path):
    """Runner checkpoints (HistoryBuffer, numpy) load through mmengine."""
    history = HistoryBuffer()
    history.update(1.5)
    checkpoint = {
        'meta': {'epoch': 1, 'seed': np.int64(3)},
        'state_dict': {'w': torch.ones(2)},
        'message_hub': {'log_scalars': {'loss': history},
                        'runtime_info': {'arr': np.arange(3)}},
    }
    path = tmp_path / 'epoch_1.pth'
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(path)  # what mmengine 0.10.7 does on torch >= 2.6
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert loaded['message_hub']['log_scalars']['loss'].current() == 1.5
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': Payload(tmp_path / 'ran')}, evil)
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(str(evil))
    assert not (tmp_path / 'ran').exists()


def test_one_channel_image_is_rejected():
    model = L2ViT(arch=R1_ARCH).eval()
    with pytest.raises(ValueError, match=r'expects images of shape \(B, 3'):
        model(torch.randn(1, 1, 64, 64))

