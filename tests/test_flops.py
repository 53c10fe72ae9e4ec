"""MAC counting agrees with the published numbers (within 2%)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.analysis.flops import count_macs


class _SDPA(nn.Module):

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (1, 3, 4, 8) read as (batch, heads, tokens, head dim)
        return F.scaled_dot_product_attention(x, x, x[..., :2])


def test_sdpa_is_counted():
    total, _ = count_macs(_SDPA(), (4, 8))
    # q @ k^T: 3 heads * 4 * 4 tokens * 8 dims; attn @ v: ... * 2 dims
    assert total == 3 * 4 * 4 * (8 + 2)


@pytest.mark.parametrize('arch, shape, published', [
    ('tiny', (224, 224), 4.7e9),
    ('base-384', (384, 384), 47.5e9),
])
def test_l2vit_macs_match_published(arch, shape, published):
    total, breakdown = count_macs(L2ViT(arch=arch), shape)
    assert abs(total - published) / published < 0.02, total
    assert set(f'stages.{i}' for i in range(4)) <= set(breakdown)
    # window 12 (base-384) is what reproduces the published 47.5G
    if arch == 'base-384':
        assert breakdown['stages.0'] > 0


@pytest.mark.parametrize('backbone, published', [
    (InLinePVT, 2.0e9),
    (InLineSwin, 4.5e9),
])
def test_inline_tiny_macs_match_published(backbone, published):
    total, _ = count_macs(backbone(arch='tiny'), (224, 224))
    assert abs(total - published) / published < 0.02, total
