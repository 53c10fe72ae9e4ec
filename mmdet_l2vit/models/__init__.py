"""Models: the backbones, their layers, the CPU inference engine, and the
classification models (``classification/``: each family's backbone class
with the official head in front, registered in timm).

The reference modules are the model: every ``forward`` under ``layers/`` and
``backbones/`` is the plain computation of the official model (training,
autocast, tracing, ``torch.compile`` and the analysis tools run them).
Reading order, one family at a time (shared: ``backbones/base.py`` for the
mmdet/mmseg contract and the stage loop, ``layers/common.py`` for the MLP,
drop path and the stage's block loop, ``layers/windows.py`` for the
windowed softmax attention):

- L²ViT: ``layers/l2vit_attention.py`` (window and linear attention) ->
  ``layers/l2vit_blocks.py`` (CPE, LCM, the LWA / LGA blocks, stem,
  downsampling) -> ``backbones/l2vit.py``.
- InLine-PVT: ``layers/inline_attention.py`` (injective linear attention and
  its local residual) -> ``backbones/inline_pvt.py`` (patch embedding, block,
  backbone).
- InLine-Swin: ``layers/inline_attention.py`` ->
  ``layers/swin_window_attention.py`` (shifted windows) ->
  ``backbones/inline_swin.py`` (patch embedding and merging, block, stage,
  backbone).

Beside the model, and chosen in one place (``DenseBackbone.forward``):

- ``layers/memory.py``: while autograd records, LayerNorm and GELU outputs
  are recomputed in backward instead of kept (training memory), and on the
  CPU the large depthwise convs take their gradients from forward
  depthwise convs (training time);
- ``cpu_inference/``: float32 CPU inference (eval mode, no autograd) runs
  in an engine of its own (banded and chunked, oneDNN epilogues, BatchNorm
  folding, in-place writes), which reads the reference modules' parameters
  and equals them to float32 rounding; ``inference='reference'`` on any
  backbone turns it off.
"""
from .backbones import *  # noqa: F401,F403
from .classification import *  # noqa: F401,F403
