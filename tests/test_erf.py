"""Effective receptive field: known answers on constructed networks, and
our backbones."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mmdet_l2vit import L2ViT
from mmdet_l2vit.analysis.erf import (effective_receptive_field, mass_radii,
                                      output_centre)

from conftest import require_toolbox

ROOT = Path(__file__).resolve().parents[1]

L2VIT_R1 = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                num_heads=[1, 2, 4, 8])


class Backbone(nn.Sequential):
    """A network returning its output as a one-map tuple (the contract)."""

    def forward(self, x: torch.Tensor):
        return (super().forward(x), )


def _images(num: int, size=(9, 11)):
    """Positive images (the default score is a sum of ReLUs)."""
    torch.manual_seed(0)
    return [torch.rand(1, 3, *size) + 0.1 for _ in range(num)]


def _box_conv(in_channels: int, out_channels: int, kernel: int,
              stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride,
                     padding=(kernel - 1) // 2 if stride == 1 else 0,
                     bias=False)
    nn.init.ones_(conv.weight)
    return conv


def test_pointwise_network_has_a_one_pixel_erf():
    net = Backbone(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 4, 1)).eval()
    erf = effective_receptive_field(net, _images(3), score='norm')
    assert erf.output_size == (9, 11) and erf.centre == (4., 5.)
    assert erf.num_images == 3
    support = (erf.heat > 0).nonzero().tolist()
    assert support == [[4, 5]]
    assert mass_radii(erf.heat, erf.centre) == {0.2: 0., 0.5: 0., 0.8: 0.}


def test_box_conv_erf_radii():
    """A 3x3 box: 1/9 of the mass at the centre, 4/9 at distance 1, 4/9 at
    sqrt(2)."""
    erf = effective_receptive_field(Backbone(_box_conv(3, 1, 3)),
                                    _images(2))
    assert (erf.heat > 0).sum() == 9
    torch.testing.assert_close(erf.heat[3:6, 4:7], torch.full((3, 3), 3.))
    radii = mass_radii(erf.heat, erf.centre, (0.1, 0.2, 0.5, 0.8, 1.0))
    assert radii == pytest.approx({0.1: 0., 0.2: 1., 0.5: 1.,
                                   0.8: math.sqrt(2), 1.0: math.sqrt(2)})


def test_strided_erf_is_centred_on_the_output_cell():
    """A 2x2 stride-2 box conv on 8x8: output 4x4, its centre (2, 2) reads
    input rows/cols 4-5, all four pixels at distance sqrt(1/2)."""
    net = Backbone(_box_conv(3, 2, 2, stride=2))
    erf = effective_receptive_field(net, _images(1, (8, 8)))
    assert erf.output_size == (4, 4) and erf.centre == (4.5, 4.5)
    assert (erf.heat > 0).nonzero().tolist() == [[4, 4], [4, 5], [5, 4],
                                                 [5, 5]]
    assert mass_radii(erf.heat, erf.centre) == pytest.approx(
        dict.fromkeys((0.2, 0.5, 0.8), math.sqrt(0.5)))
    assert output_centre((3, 5), (12, 20)) == (5.5, 9.5)


def test_backbone_erf_grows_with_depth():
    torch.manual_seed(0)
    model = L2ViT(arch=L2VIT_R1)
    model.init_weights()
    model.eval()
    images = _images(2, (64, 64))
    first = effective_receptive_field(model, images, output_index=0)
    last = effective_receptive_field(model, images, output_index=-1)
    assert first.output_size == (16, 16) and last.output_size == (2, 2)
    assert first.heat.shape == last.heat.shape == (64, 64)
    assert first.centre == (33.5, 33.5) and last.centre == (47.5, 47.5)
    r_first = mass_radii(first.heat, first.centre)
    r_last = mass_radii(last.heat, last.centre)
    assert r_first[0.2] <= r_first[0.5] <= r_first[0.8]
    assert r_first[0.5] < r_last[0.5]


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (an output norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_plain_channel_sum_is_blind_after_a_layer_norm():
    torch.manual_seed(0)
    net = Backbone(nn.Conv2d(3, 4, 3, padding=1), ChannelNorm(4))
    blind = effective_receptive_field(net, _images(1), score='sum')
    assert blind.heat.abs().max() < 1e-5
    seen = effective_receptive_field(net, _images(1))
    assert (seen.heat > 0).sum() == 9


def test_bad_inputs():
    net = Backbone(nn.Conv2d(3, 1, 1))
    with pytest.raises(ValueError, match='one size'):
        effective_receptive_field(net, [torch.randn(1, 3, 4, 4),
                                        torch.randn(1, 3, 5, 4)])
    with pytest.raises(IndexError, match='returns 1 maps'):
        effective_receptive_field(net, _images(1), output_index=1)
    with pytest.raises(ValueError, match='unknown score'):
        effective_receptive_field(net, _images(1), score='max')
    with pytest.raises(ValueError, match='no mass'):
        mass_radii(torch.zeros(3, 3), (1., 1.))


def test_erf_tool_on_a_toolbox_backbone(tmp_path):
    """tools/analysis/erf.py on mmdet's SwinTransformer (a reduced one),
    from a detector checkpoint's ``backbone.`` weights."""
    require_toolbox('mmdet.models')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    args = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                window_size=4, init_cfg=None)
    torch.manual_seed(0)
    swin = MODELS.build(dict(type='SwinTransformer', **args))
    torch.save(dict(state_dict={f'backbone.{k}': v
                                for k, v in swin.state_dict().items()}),
               tmp_path / 'det.pth')
    images = tmp_path / 'images'
    images.mkdir()
    for i in range(2):
        torch.manual_seed(i)
        cv2.imwrite(str(images / f'{i}.png'),
                    (torch.rand(40, 48, 3) * 255).byte().numpy())
    out = tmp_path / 'erf'
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   [str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'analysis' / 'erf.py'),
         '--type', 'SwinTransformer', '--backbone-args', 'embed_dims=16',
         'depths=[1,1,1,1]', 'num_heads=[1,2,4,8]', 'window_size=4',
         '--checkpoint', str(tmp_path / 'det.pth'), '--images', str(images),
         '--size', '64', '64', '--stage', '1', '--out-dir', str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / 'erf.json').read_text())
    assert result['output_size'] == [8, 8] and len(result['images']) == 2
    assert result['centre'] == [35.5, 35.5]
    assert 0 < result['radii']['0.2'] <= result['radii']['0.8']
    assert np.load(out / 'erf.npy').shape == (64, 64)
    assert (out / 'erf.png').is_file()
