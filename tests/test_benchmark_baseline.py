"""``tools/benchmark.py --baseline``: another checkout's backbones, built
beside this one's in the same process."""
from pathlib import Path

import torch

from mmdet_l2vit.analysis.benchmark import (BASELINE_SUFFIX, baseline_names,
                                            build_model)

ROOT = str(Path(__file__).resolve().parents[1])


def test_baseline_twins_are_only_our_backbones():
    assert baseline_names(['L2ViT-T', 'Swin-T (mmdet)', 'InLineSwin-T']) == [
        'L2ViT-T' + BASELINE_SUFFIX, 'InLineSwin-T' + BASELINE_SUFFIX
    ]


def test_baseline_copy_is_a_separate_unregistered_package():
    """This checkout as its own baseline: a class of another module, not in
    the registry, computing the same outputs from the same weights."""
    from mmdet.registry import MODELS
    ours = build_model('InLinePVT-T').eval()
    theirs = build_model('InLinePVT-T' + BASELINE_SUFFIX,
                         baseline=ROOT).eval()
    assert type(theirs).__module__.startswith('mmdet_l2vit_baseline.')
    assert MODELS.get('InLinePVT') is type(ours)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
