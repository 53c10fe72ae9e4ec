"""The live-tensor peak counter used by tools/benchmark.py on CPU, and the
benchmark tool end to end at a tiny size (no timing is asserted)."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmdet_l2vit.analysis.live_memory import LiveTensorPeak

MiB = 2**20
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_counts_allocations_and_frees():
    with LiveTensorPeak() as tracker:
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(MiB // 2, dtype=torch.uint8)
        tracker.release_freed()
        assert tracker.current_bytes == 2 * MiB + MiB // 2
    assert tracker.peak_bytes == 3 * MiB
    del b, c
    tracker.release_freed()
    assert tracker.current_bytes == 0


def test_views_inplace_and_existing_storages_are_not_counted():
    x = torch.zeros(256, 1024)
    with LiveTensorPeak() as tracker:
        x.add_(1)
        x.view(1024, 256).t()
        x[:10].relu_()
    assert tracker.peak_bytes == 0
    with LiveTensorPeak() as tracker:
        y = x + 1
    assert tracker.peak_bytes == y.untyped_storage().nbytes() == 1024 * 1024


def test_counts_autograd_backward():
    linear = torch.nn.Linear(1024, 1024, bias=False)
    x = torch.randn(64, 1024)
    with LiveTensorPeak() as tracker:
        linear(x).sum().backward()
    # the weight's gradient (4 MiB); the output (256 KiB) is freed after
    # .sum(), and the input needs no gradient
    assert 4 * MiB <= tracker.peak_bytes < 5 * MiB
    assert linear.weight.grad is not None


@pytest.mark.parametrize('name', ['L2ViT-T', 'InLineSwin-T'])
def test_with_cp_cuts_live_training_peak(name):
    from mmdet_l2vit.analysis.benchmark import build_model, make_step
    torch.manual_seed(0)
    x = torch.randn(1, 3, 384, 384)
    peaks = {}
    for with_cp in (False, True):
        model = build_model(name, with_cp=with_cp).train()
        with LiveTensorPeak() as tracker:
            make_step(model, x, 'fwdbwd', torch.float32)()
        peaks[with_cp] = tracker.peak_bytes
    # the parameters' gradients (~110 MiB) are in both peaks
    assert peaks[True] < 0.85 * peaks[False], peaks


def test_benchmark_tool_writes_its_report(tmp_path):
    out = tmp_path / 'bench'
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'benchmark.py'),
         '--models', 'L2ViT-T', 'Swin-T (mmdet)', '--sizes', '64', '96x128',
         '--threads', '1', '--warmup', '0', '--repeats', '1',
         '--memory-repeats', '1', '--out', str(out)],
        capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / 'results.json').read_text())
    rows = report['results']
    assert len(rows) == 2 * 2 * 2  # models x sizes x modes
    assert report['mm_gflops_per_s'] > 0
    for row in rows:
        assert row['median_s'] > 0
        assert row['peak_bytes'] > 0 and row['rss_peak_bytes'] >= 0
        if row['mode'] == 'fwd':
            assert row['gmacs'] > 0
        else:  # training keeps activations and gradients alive
            forward = next(r for r in rows if r['mode'] == 'fwd'
                           and r['model'] == row['model']
                           and r['size'] == row['size'])
            assert row['peak_bytes'] > forward['peak_bytes']
    assert (out / 'plot.png').stat().st_size > 0
    markdown = (out / 'results.md').read_text()
    assert '| L2ViT-T | 96x128 | fwd |' in markdown
    assert '| Swin-T (mmdet) | 64x64 | fwdbwd | ' in markdown
    # re-rendering an earlier report measures nothing and gives the same
    (out / 'results.md').unlink()
    rendered = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'benchmark.py'),
         '--report', str(out / 'results.json')],
        capture_output=True, text=True, cwd=REPO, check=False)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert (out / 'results.md').read_text() == markdown
    assert 'x Swin-T' in rendered.stdout
