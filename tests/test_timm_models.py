"""The classification models in timm's registry: official layouts, parity of
the logits through ``timm.create_model``, ``features_only`` and the round
trip timm classifier -> official-format file -> dense backbone."""
import json

import pytest
import timm
import torch

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.checkpoint import CheckpointError, read_checkpoint_file

from conftest import expected_engine_calls

TOLERANCE = 1e-5
R1 = {
    'l2vit': ('l2vit_tiny', L2ViT,
              dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                   num_heads=[1, 2, 4, 8])),
    'inline_pvt': ('inline_pvt_tiny', InLinePVT,
                   dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                        num_heads=[1, 2, 4, 8], mlp_ratios=[8, 8, 4, 4])),
    'inline_swin': ('inline_swin_tiny', InLineSwin,
                    dict(embed_dims=16, depths=[2, 2, 2, 2],
                         num_heads=[1, 2, 4, 8], attn_types='IIIS')),
}
#: Official model of each timm name, as named in official_keys.json.
OFFICIAL_LAYOUTS = {
    'l2vit_tiny': 'L2ViT_Tiny', 'l2vit_small': 'L2ViT_Small',
    'l2vit_base': 'L2ViT_Base', 'inline_pvt_tiny': 'InLine_PVT_T',
    'inline_pvt_small': 'InLine_PVT_S', 'inline_pvt_medium': 'InLine_PVT_M',
    'inline_pvt_large': 'InLine_PVT_L', 'inline_swin_tiny': 'InLine_Swin_T',
    'inline_swin_small': 'InLine_Swin_S', 'inline_swin_base': 'InLine_Swin_B',
}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(params=sorted(R1))
def family(request, reference_file):
    """(name, timm name, backbone class, R1 arch, checkpoint path,
    expected outputs) of one family's reference case."""
    key = request.param
    name, backbone, arch = R1[key]
    path = str(reference_file(f'{key}_r1_cls.pth'))
    expected = torch.load(reference_file(f'{key}_r1_expected.pt'),
                          weights_only=True)
    return key, name, backbone, arch, path, expected


def test_logits_at_224_match_official(family):
    """``pretrained_cfg_overlay=dict(file=...)`` reads the official file
    with the package's reader; the logits are the official code's."""
    _, name, _, arch, path, expected = family
    model = timm.create_model(name, arch=arch, num_classes=10,
                              pretrained=True,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    with torch.no_grad():
        logits = model(expected['input_224'])
    assert max_abs_diff(logits, expected['logits_224']) <= TOLERANCE
    raw = read_checkpoint_file(path)['model']
    own = model.state_dict()
    assert list(own) == list(raw)
    assert all(torch.equal(own[k], raw[k]) for k in raw)


def test_checkpoint_path_follows_timm_convention(family):
    """``checkpoint_path`` goes through timm's own weights-only loader
    (the official classes allowed): ``model_ema`` when present, as timm
    does for every model; ``use_ema=False`` takes ``model``."""
    _, name, _, arch, path, expected = family
    raw = read_checkpoint_file(path)
    model = timm.create_model(name, arch=arch, num_classes=10,
                              checkpoint_path=path).eval()
    entry = 'model_ema' if 'model_ema' in raw else 'model'
    own = model.state_dict()
    assert all(torch.equal(own[k], raw[entry][k]) for k in raw[entry])
    timm.models.load_checkpoint(model, path, use_ema=False)
    with torch.no_grad():
        logits = model(expected['input_224'])
    assert max_abs_diff(logits, expected['logits_224']) <= TOLERANCE


def test_model_ema_is_selectable(reference_file):
    path = str(reference_file('l2vit_r1_cls.pth'))
    name, _, arch = R1['l2vit']
    raw = read_checkpoint_file(path)
    key = 'stages.0.1.attn.qkv.weight'
    assert not torch.equal(raw['model'][key], raw['model_ema'][key])
    model = timm.create_model(
        name, arch=arch, num_classes=10, pretrained=True,
        pretrained_cfg_overlay=dict(file=path, checkpoint_key='model_ema'))
    assert torch.equal(model.state_dict()[key], raw['model_ema'][key])


def test_features_only_equal_dense_backbone(family, engine_calls):
    """``features_only`` maps (odd input size) equal the dense backbone's
    stage outputs (before its output norms) for the same official file;
    ``feature_info`` names them."""
    _, name, backbone, arch, path, _ = family
    encoder = timm.create_model(name, arch=arch, num_classes=10,
                                features_only=True, out_indices=(1, 2, 3),
                                pretrained=True,
                                pretrained_cfg_overlay=dict(file=path)).eval()
    dense = backbone(arch=arch, out_indices=(1, 2, 3),
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    dense.init_weights()
    dense.eval()
    assert encoder.feature_info.channels() == dense.embed_dims[1:]
    assert encoder.feature_info.reduction() == [8, 16, 32]
    x = torch.rand(2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = encoder(x)
        assert len(engine_calls) == expected_engine_calls('auto')
        expected = [s.permute(0, 3, 1, 2) for s in dense.forward_stages(x)]
    assert len(maps) == 3
    for got, want in zip(maps, expected[1:]):
        assert max_abs_diff(got, want) <= TOLERANCE


def test_timm_checkpoint_loads_into_dense_backbone(family, tmp_path):
    """A classifier trained (here: randomly initialised) in timm and saved
    as ``{'model': state_dict()}`` is an official-format file: the dense
    backbone loads it strictly through ``init_cfg`` and computes the same
    stage maps."""
    _, name, backbone, arch, _, _ = family
    torch.manual_seed(1)
    classifier = timm.create_model(name, arch=arch, num_classes=7).eval()
    path = tmp_path / 'cls.pth'
    torch.save({'model': classifier.state_dict(), 'epoch': 3}, path)
    dense = backbone(arch=arch, init_cfg=dict(type='Pretrained',
                                              checkpoint=str(path)))
    dense.init_weights()
    dense.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        want = dense.forward_stages(x)[-1].permute(0, 3, 1, 2)
        got = classifier.forward_intermediates(x, indices=[3],
                                               intermediates_only=True)[0]
    assert max_abs_diff(got, want) <= TOLERANCE


def test_wrong_family_file_is_refused_with_a_hint(reference_file):
    path = str(reference_file('inline_pvt_r1_cls.pth'))
    with pytest.raises(CheckpointError,
                       match=r'inline_pvt_r1_cls\.pth.*looks like a '
                       r'InLinePVT model, not L2ViT'):
        timm.create_model('l2vit_tiny', arch=R1['l2vit'][2], num_classes=10,
                          pretrained=True,
                          pretrained_cfg_overlay=dict(file=path))


@pytest.mark.parametrize('name', sorted(OFFICIAL_LAYOUTS))
def test_full_size_state_dict_is_the_official_layout(reference_file, name):
    """Keys, order, shapes and dtypes of every full-size registered model
    equal the official model's state dict (built on the meta device)."""
    layouts = json.loads(reference_file('official_keys.json').read_text())
    with torch.device('meta'):
        model = timm.create_model(name)
    own = [[k, list(v.shape), str(v.dtype).replace('torch.', '')]
           for k, v in model.state_dict().items()]
    assert own == layouts[OFFICIAL_LAYOUTS[name]]['keys']


@pytest.mark.parametrize('name, size', [('l2vit_demo', 32),
                                        ('inline_pvt_demo', 32),
                                        ('inline_swin_demo', 32),
                                        ('l2vit_base_384', 384)])
def test_other_registered_models_build(name, size):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert model.pretrained_cfg['input_size'] == (3, size, size)
    assert model.num_classes == (5 if name.endswith('_demo') else 1000)
