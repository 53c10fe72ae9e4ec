"""Attention analysis: ``attention_rows`` of every attention class against
its ``forward``, the capture through whole backbones, and the metrics on
constructed cases with known answers."""
import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.analysis.attention import (attention_modules,
                                            capture_attention,
                                            global_block_effective_maps,
                                            grid_queries, point_queries)
from mmdet_l2vit.analysis.attention_metrics import (collision_count,
                                                    local_share, row_entropy,
                                                    summarise_rows)
from mmdet_l2vit.models.layers.inline_attention import (
    InLineAttention, dynamic_depthwise_conv3x3)
from mmdet_l2vit.models.layers.l2vit_attention import (
    LinearAttention, SoftmaxGlobalAttention, WindowAttention)
from mmdet_l2vit.models.layers.swin_window_attention import \
    SwinWindowAttention

L2VIT_R1 = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                num_heads=[1, 2, 4, 8])
PVT_R1 = dict(L2VIT_R1, mlp_ratios=[8, 8, 4, 4])
SWIN_R1 = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
               window_size=56, attn_types='IIIS', mlp_ratio=4.)


def _values(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) value projections of the unpadded map."""
    B, H, W, C = x.shape
    if isinstance(module, InLineAttention):
        v = module.project_qkv(x)[2]
    else:
        v = module.qkv(x)[..., 2 * C:]
    return v.reshape(B, H * W, module.num_heads, -1).transpose(1, 2)


def _output_from_rows(module: nn.Module, x: torch.Tensor,
                      queries: torch.Tensor) -> torch.Tensor:
    """``proj(rows @ V + what the rows leave out)`` at the queries, (B, Q,
    C): the padding keys of the windows (value: the qkv bias, weight:
    1 - row sum) and InLine's local residual."""
    B, H, W, C = x.shape
    rows = module.attention_rows(x, queries).double()
    mixed = rows @ _values(module, x).double()  # (B, heads, Q, d)
    if module.attention_kind in ('window_softmax', 'swin_window_softmax'):
        v_bias = module.qkv.bias[2 * C:].view(module.num_heads, 1, -1)
        mixed = mixed + (1 - rows.sum(-1, keepdim=True)) * v_bias.double()
    mixed = mixed.transpose(1, 2).reshape(B, -1, C)
    if getattr(module, 'residual', None) is not None:
        kernels = module.residual(x.mean(dim=(1, 2))[..., None])
        local = dynamic_depthwise_conv3x3(
            module.project_qkv(x)[2], kernels.view(B, C, 1, 3, 3))
        mixed = mixed + local.reshape(B, H * W, C)[:, queries].double()
    return module.proj.double()(mixed).float()


def _randomise(module: nn.Module) -> nn.Module:
    """Non-trivial parameters (biases, temperatures, position tables)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)
        if isinstance(module, LinearAttention):
            module.temperature.uniform_(0.2, 1.5)
    return module.eval()


def _check_rows_reproduce_forward(module: nn.Module, size, batch=2):
    torch.manual_seed(1)
    H, W = size
    x = torch.randn(batch, H, W, module.proj.in_features)
    queries = torch.randperm(H * W)[:min(H * W, 40)]
    with torch.no_grad():
        expected = module(x).reshape(batch, H * W, -1)[:, queries]
        got = _output_from_rows(module, x, queries)
        module.proj.float()
        rows = module.attention_rows(x, queries)
    assert rows.dtype == torch.float32
    assert rows.shape == (batch, module.num_heads, queries.numel(), H * W)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    return rows


@pytest.mark.parametrize('size', [(14, 7), (10, 12)])
def test_window_rows_reproduce_forward(size):
    module = _randomise(WindowAttention(16, 2, window_size=7))
    rows = _check_rows_reproduce_forward(module, size)
    assert module.attention_kind == 'window_softmax'
    # each row lives in its window; padding keys are dropped (sum < 1)
    sums = rows.sum(-1)
    if size == (14, 7):
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        assert sums.max() <= 1 + 1e-6 and sums.min() < 0.99
    assert ((rows > 0).sum(-1) <= 49).all()


@pytest.mark.parametrize('floor', [100., None])
def test_linear_rows_reproduce_forward(floor):
    module = _randomise(LinearAttention(16, 2, denominator_floor=floor))
    rows = _check_rows_reproduce_forward(module, (9, 11))
    assert module.attention_kind == 'linear'
    assert (rows >= 0).all()
    tau = module.temperature.detach().view(1, -1, 1)
    assert (rows.sum(-1) <= tau * (1 + 1e-5)).all()


@pytest.mark.parametrize('size, shift', [((8, 12), 2), ((10, 9), 2),
                                         ((10, 9), 0), ((3, 5), 2)])
def test_swin_rows_reproduce_forward(size, shift):
    module = _randomise(SwinWindowAttention(16, 2, 4, shift_size=shift))
    rows = _check_rows_reproduce_forward(module, size)
    assert module.attention_kind == 'swin_window_softmax'
    assert ((rows > 0).sum(-1) <= 16).all()


@pytest.mark.parametrize('layout', ['q_kv', 'qkv'])
@pytest.mark.parametrize('switches', [
    dict(), dict(injective=False, kernel_func='relu'),
    dict(local_residual=False)
])
def test_inline_rows_reproduce_forward(layout, switches):
    module = _randomise(
        InLineAttention(16, 2, qkv_layout=layout, **switches))
    rows = _check_rows_reproduce_forward(module, (6, 7))
    assert module.attention_kind == 'inline'
    if switches.get('injective', True):
        sums = rows.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))
        assert (rows < 0).any()  # injective weights may be negative


def test_softmax_global_rows_reproduce_forward():
    module = _randomise(SoftmaxGlobalAttention(16, 2))
    rows = _check_rows_reproduce_forward(module, (5, 9))
    assert module.attention_kind == 'softmax'
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 2, 40))


def test_bad_queries_are_rejected():
    module = WindowAttention(16, 2, 7)
    x = torch.randn(1, 5, 5, 16)
    with pytest.raises(ValueError, match='25 tokens'):
        module.attention_rows(x, torch.tensor([25]))
    with pytest.raises(ValueError, match='1-D integer'):
        module.attention_rows(x, torch.tensor([0.5]))


# ------------------------------------------------------------------ metrics
def test_entropy_of_known_rows():
    N = 50
    uniform = torch.full((N, ), 1 / N)
    one_hot = torch.zeros(N).index_fill_(0, torch.tensor([7]), 1.)
    two_signed = torch.zeros(N)
    two_signed[[3, 9]] = torch.tensor([-0.5, 0.5])  # |w| is what counts
    entropy = row_entropy(torch.stack([uniform, one_hot, two_signed]))
    torch.testing.assert_close(
        entropy, torch.tensor([math.log(N), 0., math.log(2)]))
    assert row_entropy(torch.zeros(1, N)).isnan().all()


def test_identical_rows_collide_and_distinct_rows_do_not():
    torch.manual_seed(0)
    rows = torch.rand(2, 6, 30).softmax(-1)  # (heads, Q, N), all distinct
    assert collision_count(rows).tolist() == [0, 0]
    assert collision_count(rows, metric='cosine').tolist() == [0, 0]
    rows[1, 4] = rows[1, 1]
    rows[1, 5] = rows[1, 1] * (1 + 1e-5)  # equal up to rounding
    assert collision_count(rows).tolist() == [0, 3]
    assert collision_count(rows, metric='cosine').tolist() == [0, 3]
    zeros = torch.zeros(3, 30)  # two zero rows are identical
    assert int(collision_count(zeros)) == 3


def test_linear_attention_is_not_injective_and_inline_is():
    """Queries along one direction (tokens x and 2x, no bias) get the same
    linear-attention row (no floor), while InLine's rows differ."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 16)
    x[0, 3, 4] = 2 * x[0, 0, 0]
    queries = torch.tensor([0, 19, 7])
    linear = LinearAttention(16, 2, denominator_floor=None)
    inline = InLineAttention(16, 2)
    for module in (linear, inline):
        nn.init.zeros_(module.qkv.bias)
    with torch.no_grad():
        linear_rows = linear.attention_rows(x, queries)
        inline_rows = inline.attention_rows(x, queries)
    assert collision_count(linear_rows).tolist() == [[1, 1]]
    assert collision_count(inline_rows).tolist() == [[0, 0]]


def _box_attention(window: int) -> SwinWindowAttention:
    """Window attention whose weights are a 3x3 box: q = k = 0, and the
    relative position bias is 0 within one step and -1e4 beyond."""
    module = SwinWindowAttention(16, 2, window)
    nn.init.zeros_(module.qkv.weight)
    nn.init.zeros_(module.qkv.bias)
    side = 2 * window - 1
    offsets = torch.arange(side) - (window - 1)
    near = (offsets.abs()[:, None] <= 1) & (offsets.abs()[None, :] <= 1)
    with torch.no_grad():
        module.relative_position_bias_table.copy_(
            torch.where(near, 0., -1e4).view(-1, 1).expand(-1, 2))
    return module.eval()


def test_box_attention_is_fully_local():
    module = _box_attention(window=7)
    x = torch.randn(1, 7, 7, 16)
    queries = torch.arange(49)
    with torch.no_grad():
        rows = module.attention_rows(x, queries)
    share_3 = local_share(rows, queries, (7, 7), 3)
    torch.testing.assert_close(share_3, torch.ones_like(share_3))
    # interior queries spread over 9 tokens, corners over 4
    entropy = row_entropy(rows)[0, 0].view(7, 7)
    assert entropy[3, 3].item() == pytest.approx(math.log(9))
    assert entropy[0, 0].item() == pytest.approx(math.log(4))
    # a uniform row has the share of its neighbourhood's size
    uniform = torch.full((1, 49), 1 / 49)
    assert local_share(uniform, torch.tensor([24]), (7, 7), 3).item() == \
        pytest.approx(9 / 49)
    assert local_share(uniform, torch.tensor([0]), (7, 7), 7).item() == \
        pytest.approx(16 / 49)
    summary = summarise_rows(rows, queries, (7, 7))
    assert summary['local_share_3'] == pytest.approx(1.)
    assert summary['collisions'] == 0
    assert summary['pairs'] == 2 * 49 * 48 // 2


# ------------------------------------------------------------------ capture
def test_query_samplers():
    assert grid_queries(2)(8, 6).tolist() == [2 * 6 + 1, 2 * 6 + 4,
                                              6 * 6 + 1, 6 * 6 + 4]
    assert grid_queries(4)(2, 2).tolist() == [0, 1, 2, 3]
    sample = point_queries([(10, 20), (11, 21), (63, 0)], (64, 64))
    assert sample(16, 16).tolist() == [5 * 16 + 2, 15]
    with pytest.raises(ValueError, match='outside'):
        point_queries([(64, 0)], (64, 64))


@pytest.mark.parametrize('cls, arch, kinds', [
    (L2ViT, L2VIT_R1, ['window_softmax', 'linear'] * 4),
    (partial(L2ViT, softmax_stages=(3, )), L2VIT_R1,
     ['window_softmax', 'linear'] * 3 + ['window_softmax', 'softmax']),
    (InLinePVT, PVT_R1, ['inline'] * 8),
    (InLineSwin, SWIN_R1, ['inline'] * 6 + ['swin_window_softmax'] * 2),
])
def test_capture_runs_every_attention_layer(cls, arch, kinds):
    torch.manual_seed(0)
    model = cls(arch=arch).eval()
    assert model.inference == 'auto'
    images = torch.randn(2, 3, 64, 96)
    records = capture_attention(model, images, grid_queries(3))
    assert [r.kind for r in records] == kinds
    assert [r.name for r in records] == [n for n, _ in
                                         attention_modules(model)]
    assert model.inference == 'auto'  # restored
    first, last = records[0], records[-1]
    assert first.map_size == (16, 24) and last.map_size == (2, 3)
    assert first.rows.shape == (2, 1, 9, 384)
    assert last.rows.shape == (2, 8, 6, 6)  # a 2x3 map has 6 tokens
    only = capture_attention(model, images, grid_queries(2),
                             names=[last.name])
    assert [r.name for r in only] == [last.name]
    with pytest.raises(KeyError, match='no attention module'):
        capture_attention(model, images, grid_queries(2), names=['x'])


def _lcm_only_block():
    """An L²ViT global block where only the LCM branch is non-zero."""
    from mmdet_l2vit.models.layers.l2vit_blocks import LGABlock
    block = LGABlock(8, 2, 4., 0.)
    for module in (block.cpe[0].proj, block.attn.proj, block.mlp.fc2):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
    return block.eval()


def test_effective_map_of_a_global_block():
    block = _lcm_only_block()
    x = torch.randn(1, 20, 20, 8)
    queries = torch.tensor([10 * 20 + 10, 0])
    plain = global_block_effective_maps(
        nn.Sequential(block), x, lambda h, w: queries, with_lcm=False)
    # without the LCM the block is the identity: sqrt(C) at the query
    expected = torch.zeros(1, 1, 2, 400)
    expected[0, 0, 0, 210] = expected[0, 0, 1, 0] = 8**0.5
    assert [r.name for r in plain] == ['0'] and plain[0].kind == 'effective'
    torch.testing.assert_close(plain[0].rows, expected)
    added = global_block_effective_maps(  # what the block adds: nothing
        nn.Sequential(block), x, lambda h, w: queries, with_lcm=False,
        exclude_identity=True)[0].rows
    assert added.abs().max() == 0
    # the LCM (two 7x7 depthwise convs) spreads it over 13 x 13, no further
    with_lcm = global_block_effective_maps(
        nn.Sequential(block), x, lambda h, w: queries)[0].rows
    share_13 = local_share(with_lcm, queries, (20, 20), 13)
    torch.testing.assert_close(share_13, torch.ones_like(share_13))
    assert local_share(with_lcm, queries, (20, 20), 11).max() < 1
    assert (with_lcm.view(2, 20, 20)[0, 4:17, 4:17] > 0).all()


# -------------------------------------------------------------------- tools
ROOT = Path(__file__).resolve().parents[1]


def run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``tools/analysis/<script>`` on one thread; fail on an error."""
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   [str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'analysis' / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def detector_checkpoint(model: nn.Module, path: Path) -> Path:
    """``model`` saved as a detector's backbone (mmengine layout)."""
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in
                                model.state_dict().items()},
                    meta=dict()), path)
    return path


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory) -> Path:
    import cv2
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for i, size in enumerate([(64, 80), (72, 64), (64, 64)]):
        cv2.imwrite(str(root / f'{i}.png'),
                    rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return root


def test_build_backbone_reads_its_arch_from_a_detector_checkpoint(tmp_path):
    from mmdet_l2vit.analysis.loading import build_backbone
    torch.manual_seed(0)
    model = L2ViT(arch=L2VIT_R1)
    path = detector_checkpoint(model, tmp_path / 'det.pth')
    spec = build_backbone(type='L2ViT', checkpoint=str(path))
    assert not spec.model.training
    assert spec.model.embed_dims == [16, 32, 64, 128]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(spec.model.state_dict()[key], value)
    assert spec.label == 'L2ViT (det.pth)'
    with pytest.raises(ValueError, match='either a config'):
        build_backbone()
    with pytest.raises(FileNotFoundError):
        build_backbone(type='L2ViT', arch='tiny', checkpoint='missing.pth')


def test_attention_maps_tool(tmp_path, image_dir):
    checkpoint = detector_checkpoint(L2ViT(arch=L2VIT_R1),
                                     tmp_path / 'l2vit.pth')
    out = tmp_path / 'maps'
    proc = run_tool('attention_maps.py', '--type', 'L2ViT', '--checkpoint',
                    str(checkpoint), '--image', str(image_dir / '0.png'),
                    '--points', '10,20', '70,50', '--effective',
                    '--layers', 'stages.0.0.attn', 'stages.1.1.attn',
                    '--out-dir', str(out))
    assert sorted(p.name for p in out.iterdir()) == [
        'stages.0.0.attn.png', 'stages.1.1.attn.png',
        'stages.1.1_effective_+LCM.png', 'stages.1.1_effective_-LCM.png']
    assert '4 figures' in proc.stdout


def test_attention_stats_tool_compares_runs(tmp_path, image_dir):
    checkpoint = detector_checkpoint(
        InLinePVT(arch=PVT_R1, kernel_func='relu'), tmp_path / 'pvt.pth')
    first = tmp_path / 'first'
    run_tool('attention_stats.py', '--type', 'InLinePVT', '--checkpoint',
             str(checkpoint), '--backbone-args', 'kernel_func=relu',
             '--images', str(image_dir), '--grid', '3', '--label', 'a',
             '--out-dir', str(first))
    stats = json.loads((first / 'stats.json').read_text())
    layers = stats['runs'][0]['layers']
    assert [layer['name'] for layer in layers] == [
        f'block{i}.{j}.attn' for i in range(1, 5) for j in range(2)]
    assert all(layer['images'] == 3 for layer in layers)
    # a uniform-ish injective row: entropy close to log N
    assert 0.5 < layers[0]['normalised_entropy'] <= 1 + 1e-6
    second = tmp_path / 'second'
    run_tool('attention_stats.py', '--type', 'InLinePVT', '--checkpoint',
             str(checkpoint), '--backbone-args', 'kernel_func=relu',
             'injective=False', '--images', str(image_dir / '1.png'),
             '--grid', '3', '--label', 'b', '--compare',
             str(first / 'stats.json'), '--out-dir', str(second))
    assert {p.name for p in second.iterdir()} == {
        'stats.json', 'entropy.png', 'normalised_entropy.png',
        'local_share_3.png', 'local_share_7.png', 'collision_fraction.png'}
