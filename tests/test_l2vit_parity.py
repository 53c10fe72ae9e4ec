"""L²ViT numerical parity with outputs of the official code (R1 config)."""
import json

import pytest
import torch
import torch.nn.functional as F

from mmdet_l2vit import L2ViT
from mmdet_l2vit.checkpoint import extract_state_dict, read_checkpoint_file

from conftest import expected_engine_calls

R1_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
               num_heads=[1, 2, 4, 8])
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def expected(reference_file):
    return torch.load(reference_file('l2vit_r1_expected.pt'),
                      weights_only=True)


@pytest.fixture(scope='module')
def checkpoint_path(reference_file):
    return str(reference_file('l2vit_r1_cls.pth'))


def build_r1(checkpoint_path, **kwargs):
    model = L2ViT(arch=R1_ARCH, init_cfg=dict(type='Pretrained',
                                              checkpoint=checkpoint_path),
                  **kwargs)
    model.init_weights()
    return model.eval()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize('inference, grad', [('reference', False),
                                             ('auto', False),
                                             ('auto', True)],
                         ids=['reference', 'auto', 'autograd'])
def test_detection_features_match_official(expected, checkpoint_path,
                                           engine_calls, inference, grad):
    """Batch 2 at 97x131: the reference modules, the default (the CPU
    inference engine where it applies) and the training path (autograd,
    LayerNorm/GELU recomputation on)."""
    model = build_r1(checkpoint_path, inference=inference)
    norms = expected['norms']
    model.load_state_dict(norms, strict=False)
    with torch.set_grad_enabled(grad):
        outs = model(expected['input'])
    assert len(engine_calls) == expected_engine_calls(inference, grad)
    assert len(outs) == 4
    for out, ref in zip(outs, expected['features']):
        assert max_abs_diff(out.detach(), ref) <= TOLERANCE


def test_stage_tokens_and_logits_at_224_match_official(
        expected, checkpoint_path):
    model = build_r1(checkpoint_path)
    state_dict, _ = extract_state_dict(read_checkpoint_file(checkpoint_path))
    with torch.no_grad():
        stages = model.forward_stages(expected['input_224'])
        last = stages[-1].flatten(1, 2)
        pooled = F.layer_norm(last, last.shape[-1:],
                              state_dict['norm.weight'],
                              state_dict['norm.bias']).mean(1)
        logits = F.linear(pooled, state_dict['head.weight'],
                          state_dict['head.bias'])
    for stage, ref in zip(stages, expected['stage_tokens_224']):
        assert max_abs_diff(stage.permute(0, 3, 1, 2), ref) <= TOLERANCE
    assert max_abs_diff(logits, expected['logits_224']) <= TOLERANCE


def test_default_entry_is_model_and_ema_is_selectable(checkpoint_path):
    raw = read_checkpoint_file(checkpoint_path)
    key = 'stages.0.1.attn.qkv.weight'
    default = build_r1(checkpoint_path)
    assert torch.equal(default.state_dict()[key], raw['model'][key])
    ema = L2ViT(arch=R1_ARCH, init_cfg=dict(
        type='Pretrained', checkpoint=checkpoint_path,
        checkpoint_key='model_ema'))
    ema.init_weights()
    assert torch.equal(ema.state_dict()[key], raw['model_ema'][key])
    assert not torch.equal(raw['model'][key], raw['model_ema'][key])


def test_bn_running_stats_are_loaded(checkpoint_path):
    raw = read_checkpoint_file(checkpoint_path)['model']
    model = build_r1(checkpoint_path)
    for key in ('downsample_layers.0.proj.proj.1.running_var',
                'stages.1.1.local_mp.bn.running_mean'):
        assert torch.equal(model.state_dict()[key], raw[key])


@pytest.mark.parametrize('name', ['tiny', 'small', 'base'])
def test_full_size_official_layout_converts_exactly(reference_file, name):
    layouts = json.loads(reference_file('official_keys.json').read_text())
    official = layouts[f'L2ViT_{name.capitalize()}']['keys']
    detection = layouts[f'L2ViT_{name.capitalize()}_det_backbone_out0123']
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape, dtype in official:
        if dtype == 'int64':
            state_dict[key] = torch.randint(0, 1000, shape,
                                            generator=generator)
        else:
            state_dict[key] = torch.randn(shape, generator=generator)
    assert L2ViT.infer_arch_from_state_dict(state_dict) == dict(
        L2ViT.arch_zoo[name])
    model = L2ViT(arch=name)
    converted = model.convert_official_state_dict(state_dict)
    assert sorted(converted.dropped) == sorted(
        ['norm.weight', 'norm.bias', 'head.weight', 'head.bias'])
    model.load_state_dict(converted.state_dict, strict=True)
    own = model.state_dict()
    assert [[k, list(v.shape)] for k, v in own.items()] == [
        [k, shape] for k, shape, _ in detection['keys']
    ]
    for key, value in state_dict.items():
        if key in own:
            assert torch.equal(own[key], value), key
