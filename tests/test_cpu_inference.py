"""The CPU inference engine (``models/cpu_inference``) equals the reference
path, really runs, leaves the model and the input alone, and is chosen only
where it is exact."""
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F

from mmdet_l2vit import InLinePVT, InLineSwin, L2ViT
from mmdet_l2vit.models.cpu_inference import (chunks, cpu_inference_applies,
                                              inline)
from mmdet_l2vit.models.cpu_inference import l2vit as l2vit_engine
from mmdet_l2vit.models.cpu_inference.onednn import ONEDNN_AVAILABLE

pytestmark = pytest.mark.skipif(not ONEDNN_AVAILABLE,
                                reason='this torch has no oneDNN fused ops')

L2VIT_ARCH = dict(embed_dims=[32, 64, 128, 256], depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8])
# 6+ heads take the head-major InLine path, fewer the strided head views
PVT_ARCH = dict(embed_dims=[32, 64, 96, 128], depths=[2, 2, 2, 2],
                num_heads=[1, 2, 6, 8], mlp_ratios=[8, 8, 4, 4])
# 'MSIS1': an InLine and a shifted softmax block in stage 0, softmax blocks
# (shifted at 97x131) in stage 1, InLine in stage 2, softmax in stage 3
SWIN_ARCH = dict(embed_dims=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 6, 12],
                 attn_types='MSIS1')

FAMILIES = [
    pytest.param(L2ViT, dict(arch=L2VIT_ARCH), id='l2vit'),
    pytest.param(InLinePVT, dict(arch=PVT_ARCH), id='inline_pvt'),
    pytest.param(InLineSwin, dict(arch=SWIN_ARCH), id='inline_swin'),
]
ENGINE_CASES = FAMILIES + [
    pytest.param(L2ViT, dict(arch=dict(L2VIT_ARCH, window_size=3),
                             out_indices=(0, 2)),
                 id='l2vit-window3-out02'),
    pytest.param(InLinePVT, dict(arch=PVT_ARCH, kernel_func='exp',
                                 out_norms=True), id='inline_pvt-exp-norms'),
    pytest.param(InLineSwin, dict(arch=SWIN_ARCH, kernel_func='relu'),
                 id='inline_swin-relu'),
    pytest.param(InLineSwin, dict(arch=dict(SWIN_ARCH, attn_types='IIIS'),
                                  kernel_func='leakyrelu'),
                 id='inline_swin-IIIS-leakyrelu'),
]
#: The engine's per-block runners: (module, name).
BLOCK_RUNNERS = [(l2vit_engine, 'lwa_block_'), (l2vit_engine, 'lga_block_'),
                 (inline, 'inline_block'), (inline, 'swin_softmax_block')]


def random_model(cls, seed: int = 0, **kwargs):
    """A model in eval mode with random weights and BatchNorm statistics
    (away from the identity inits)."""
    torch.manual_seed(seed)
    model = cls(drop_path_rate=0.2, **kwargs)
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param), alpha=0.05)
        for name, buffer in model.named_buffers():
            if name.endswith('running_mean'):
                buffer.normal_(0., 0.2)
            elif name.endswith('running_var'):
                buffer.uniform_(0.5, 2.)
    return model.eval()


def num_blocks(model) -> int:
    """Blocks the engine runs (stages up to the last output index)."""
    return sum(model.depths[:max(model.out_indices) + 1])


class EngineSpy:
    """Records, for every engine block call, the rows of its input map and
    how many bands/chunks each of its loops ran (wrapping the real block
    runners and ``chunks.row_bands`` / ``chunks.token_spans``)."""

    def __init__(self, monkeypatch) -> None:
        self.blocks: List[Tuple[int, List[int]]] = []
        self._active = False
        for module, name in BLOCK_RUNNERS:
            monkeypatch.setattr(module, name,
                                self._block(getattr(module, name)))
        for name in ('row_bands', 'token_spans'):
            monkeypatch.setattr(chunks, name,
                                self._pieces(getattr(chunks, name)))

    def _block(self, run):

        def spy(block, x, *args, **kwargs):
            self.blocks.append((x.shape[1], []))
            self._active = True
            try:
                return run(block, x, *args, **kwargs)
            finally:
                self._active = False

        return spy

    def _pieces(self, split):

        def spy(*args):
            pieces = split(*args)
            if self._active:
                self.blocks[-1][1].append(len(pieces))
            return pieces

        return spy


@pytest.fixture
def small_bands(monkeypatch):
    """The smallest chunks and bands: every block runs in several."""
    monkeypatch.setattr(chunks, 'CHUNK_BYTES', 1)
    monkeypatch.setattr(chunks, 'MIN_CHUNK_TOKENS', 4)


def assert_close(outs, refs, relative: bool = True) -> None:
    """max |out - ref| <= 1e-5 (times max(1, max |ref|) if ``relative``)."""
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape and out.is_contiguous()
        scale = max(1., ref.abs().max().item()) if relative else 1.
        assert (out - ref).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize('size', [(97, 131), (61, 45)],
                         ids=['97x131', '61x45'])
@pytest.mark.parametrize('cls, kwargs', ENGINE_CASES)
def test_engine_equals_reference_path(cls, kwargs, size, small_bands,
                                      monkeypatch):
    model = random_model(cls, **kwargs)
    x = torch.randn(2, 3, *size)
    x_before = x.clone()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    spy = EngineSpy(monkeypatch)
    with torch.no_grad():
        assert cpu_inference_applies(model, x)
        outs = model(x)
        engine_blocks = list(spy.blocks)
        spy.blocks.clear()
        model.inference = 'reference'
        refs = model(x)
    assert spy.blocks == []  # the reference path ran no engine code
    assert len(engine_blocks) == num_blocks(model)
    for rows, pieces in engine_blocks:
        # several bands or chunks in every block (a one-row map has one band)
        assert max(pieces) > 1 or rows == 1, (rows, pieces)
    assert_close(outs, refs)
    assert torch.equal(x, x_before)
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value), key


@pytest.mark.parametrize('cls, kwargs', FAMILIES)
def test_engine_applies_only_where_it_is_exact(cls, kwargs):
    model = random_model(cls, **kwargs)
    x = torch.randn(1, 3, 64, 64)
    assert not cpu_inference_applies(model, x)  # autograd on
    with torch.no_grad():
        assert cpu_inference_applies(model, x)
        assert not cpu_inference_applies(model, x.double())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not cpu_inference_applies(model, x)
        model.train()
        assert not cpu_inference_applies(model, x)
        model.eval()
        model.inference = 'reference'
        assert not cpu_inference_applies(model, x)
    with torch.inference_mode():
        model.inference = 'auto'
        assert cpu_inference_applies(model, x)


# ------------------------------------------------- official reference data
def pretrained_r1(cls, arch, path):
    model = cls(arch=arch, init_cfg=dict(type='Pretrained',
                                         checkpoint=str(path)))
    model.init_weights()
    return model.eval()


def test_engine_matches_official_l2vit_features(reference_file, small_bands,
                                                monkeypatch):
    expected = torch.load(reference_file('l2vit_r1_expected.pt'),
                          weights_only=True)
    model = pretrained_r1(
        L2ViT, dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                    num_heads=[1, 2, 4, 8]),
        reference_file('l2vit_r1_cls.pth'))
    model.load_state_dict(expected['norms'], strict=False)
    spy = EngineSpy(monkeypatch)
    with torch.no_grad():
        outs = model(expected['input'])
    assert len(spy.blocks) == num_blocks(model)
    assert_close(outs, expected['features'], relative=False)


@pytest.mark.parametrize('size', ['224', '120x152'])
def test_engine_matches_official_inline_pvt_stages(reference_file, size,
                                                   small_bands, monkeypatch):
    expected = torch.load(reference_file('inline_pvt_r1_expected.pt'),
                          weights_only=True)
    model = pretrained_r1(
        InLinePVT, dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                        num_heads=[1, 2, 4, 8], mlp_ratios=[8, 8, 4, 4]),
        reference_file('inline_pvt_r1_cls.pth'))
    spy = EngineSpy(monkeypatch)
    with torch.no_grad():
        outs = model(expected[f'input_{size}'])  # no output norms
    assert len(spy.blocks) == num_blocks(model)
    assert_close(outs, expected[f'stage_tokens_{size}'], relative=False)


def test_engine_matches_official_inline_swin_stages(reference_file,
                                                    small_bands,
                                                    monkeypatch):
    expected = torch.load(reference_file('inline_swin_r1_expected.pt'),
                          weights_only=True)
    model = pretrained_r1(
        InLineSwin, dict(embed_dims=16, depths=[2, 2, 2, 2],
                         num_heads=[1, 2, 4, 8], window_size=56,
                         attn_types='IIIS', mlp_ratio=4.),
        reference_file('inline_swin_r1_cls.pth'))
    spy = EngineSpy(monkeypatch)
    with torch.no_grad():
        outs = model(expected['input_224'])
    assert len(spy.blocks) == num_blocks(model)
    # the outputs are norm{i} (created at weight 1, bias 0) of the stages
    refs = [
        F.layer_norm(stage.permute(0, 2, 3, 1), stage.shape[1:2],
                     eps=getattr(model, f'norm{i}').eps).permute(0, 3, 1, 2)
        for i, stage in enumerate(expected['stage_tokens_224'])
    ]
    assert_close(outs, refs, relative=False)
