"""CPU inference engine: the backbones' float32 CPU inference, fast.

The reference modules under ``models/layers`` and ``models/backbones`` are
the model; this package evaluates the same model for float32 inference on
the CPU with the speed machinery they leave out: bands of image rows and
chunks of tokens whose intermediates stay in cache (:mod:`.chunks`), maps
written in place and scratch buffers reused across blocks
(:class:`.chunks.Workspace`), oneDNN fused GEMM/conv epilogues and folded
BatchNorms (:mod:`.onednn`). It reads the reference modules' parameters and
never changes them; its outputs equal the reference path's up to float32
rounding.

A backbone's ``forward`` asks :func:`cpu_inference_applies` once and, if it
holds, returns :func:`run_cpu_inference`. One runner per family:
:func:`.l2vit.run_l2vit`, :func:`.inline.run_inline_pvt`,
:func:`.inline.run_inline_swin`.
"""
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from .inline import run_inline_pvt, run_inline_swin
from .l2vit import run_l2vit
from .onednn import ONEDNN_AVAILABLE

#: The runner of each backbone family (``backbone.family``).
RUNNERS: Dict[str, Callable[[nn.Module, torch.Tensor],
                            Tuple[torch.Tensor, ...]]] = {
    'L2ViT': run_l2vit,
    'InLinePVT': run_inline_pvt,
    'InLineSwin': run_inline_swin,
}

__all__ = ['cpu_inference_applies', 'run_cpu_inference', 'RUNNERS']


def cpu_inference_applies(backbone: nn.Module, x: torch.Tensor) -> bool:
    """Whether the engine computes ``backbone(x)`` exactly.

    True when the oneDNN fused kernels exist, ``x`` is a float32 CPU tensor,
    autograd is off (the fused kernels have no backward), CPU autocast is
    off, nothing traces or compiles (they do their own fusion), the backbone
    is in eval mode (drop path a no-op, BatchNorm on running statistics),
    its family has a runner, its ablation switches are the official ones
    (other settings run the reference modules) and
    ``backbone.inference == 'auto'``.

    Args:
        backbone (nn.Module): An mmdet_l2vit backbone.
        x (Tensor): Its input.
    """
    return (ONEDNN_AVAILABLE and x.device.type == 'cpu'
            and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu')
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not backbone.training
            and backbone.inference == 'auto'
            and backbone.family in RUNNERS
            and backbone.has_official_switches())


def run_cpu_inference(backbone: nn.Module,
                      x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The backbone's whole output, computed by the engine.

    Args:
        backbone (nn.Module): An mmdet_l2vit backbone for which
            :func:`cpu_inference_applies` holds.
        x (Tensor): (B, C_in, H, W) images, validated by the backbone (not
            modified).

    Returns:
        tuple[Tensor]: One contiguous NCHW map per ``backbone.out_indices``,
        output norms applied when the backbone has them.
    """
    return RUNNERS[backbone.family](backbone, x)
