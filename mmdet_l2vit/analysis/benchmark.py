"""Backbone latency and peak-memory measurement (used by tools/benchmark.py).

Timing runs every model of a resolution in one process, interleaved: each
repeat round times every model once, in turn (the order rotating from round
to round), so slow drifts of the machine (thermal, other load) and what one
model leaves behind for the next hit all models alike. Peak memory is
measured per case in a fresh subprocess: on CUDA
``torch.cuda.max_memory_allocated`` (tensors only); on CPU the peak of live
tensor storages created by one iteration
(:class:`~mmdet_l2vit.analysis.live_memory.LiveTensorPeak`, the same
quantity) and, reported beside it, the growth of the process's peak resident
set during one iteration (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), which counts everything the iteration touched,
allocator heap slack included.
"""
import json
import statistics
import subprocess
import sys
import time
from typing import (Any, Callable, Dict, List, NamedTuple, Optional,
                    Sequence, Tuple)

import torch
from torch import nn

from .baseline import load_baseline_backbones
from .live_memory import LiveTensorPeak

#: name -> (toolbox type, constructor kwargs)
MODEL_SPECS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    'L2ViT-T': ('L2ViT', dict(arch='tiny')),
    'InLinePVT-T': ('InLinePVT', dict(arch='tiny')),
    'InLineSwin-T': ('InLineSwin', dict(arch='tiny')),
    'Swin-T (mmdet)': ('SwinTransformer', dict(
        embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
        window_size=7, convert_weights=False)),
    'PVTv2-b2 (mmdet)': ('PyramidVisionTransformerV2', dict(
        embed_dims=64, num_layers=[3, 4, 6, 3])),
}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16,
          'fp16': torch.float16}


#: Our backbone types (``compile`` and ``--baseline`` apply to them).
OUR_TYPES = ('L2ViT', 'InLinePVT', 'InLineSwin')
#: Suffix of the names of models built from the ``--baseline`` checkout.
BASELINE_SUFFIX = ' @baseline'


def baseline_names(names: Sequence[str]) -> List[str]:
    """The ``--baseline`` twins of our models among ``names``."""
    return [
        name + BASELINE_SUFFIX for name in names
        if MODEL_SPECS[name][0] in OUR_TYPES
    ]


def build_model(name: str, with_cp: bool = False, compile: bool = False,
                baseline: Optional[str] = None) -> nn.Module:
    """Build a benchmark model by its name in :data:`MODEL_SPECS`.

    Args:
        name (str): A key of :data:`MODEL_SPECS`, or one with
            :data:`BASELINE_SUFFIX`: the same backbone from the checkout
            ``baseline`` (see :mod:`.baseline`).
        with_cp (bool): Gradient checkpointing.
        compile (bool): ``torch.compile`` (this package's backbones only).
        baseline (str, optional): Root of the other checkout.
    """
    import mmdet.models  # noqa: F401  (registers mmdet's backbones)
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import mmdet_l2vit  # noqa: F401

    init_default_scope('mmdet')
    from_baseline = name.endswith(BASELINE_SUFFIX)
    type_name, kwargs = MODEL_SPECS[name[:-len(BASELINE_SUFFIX)]
                                    if from_baseline else name]
    kwargs = dict(kwargs)
    if with_cp:
        kwargs['with_cp'] = True
    if compile and type_name in OUR_TYPES:
        kwargs['compile'] = True
    if from_baseline:
        if baseline is None:
            raise ValueError(f'{name!r} needs the baseline checkout.')
        backbones = load_baseline_backbones(baseline)
        return getattr(backbones, type_name)(**kwargs)
    return MODELS.build(dict(kwargs, type=type_name))


def parse_size(text: str) -> Tuple[int, int]:
    """``'1024'`` -> (1024, 1024); ``'800x1216'`` -> (800, 1216)."""
    parts = text.lower().split('x')
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


def make_loss_step(model: nn.Module, x: torch.Tensor,
                   dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """The forward of a training step: the sum of the output means."""
    autocast = torch.autocast(x.device.type, dtype=dtype,
                              enabled=dtype != torch.float32)

    def loss() -> torch.Tensor:
        with autocast:
            outs = model(x)
        return sum(o.float().mean() for o in outs)

    return loss


def make_step(model: nn.Module, x: torch.Tensor, mode: str,
              dtype: torch.dtype) -> Callable[[], None]:
    """One forward (no grad) or forward+backward call."""
    autocast = torch.autocast(x.device.type, dtype=dtype,
                              enabled=dtype != torch.float32)
    loss = make_loss_step(model, x, dtype)

    def forward() -> None:
        with torch.no_grad(), autocast:
            model(x)

    def forward_backward() -> None:
        loss().backward()
        model.zero_grad(set_to_none=True)

    return forward if mode == 'fwd' else forward_backward


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


class Timing(NamedTuple):
    median: float
    low: float
    high: float
    samples: List[float]


def time_interleaved(steps: Dict[str, Callable[[], None]], device: str,
                     warmup: int, repeats: int,
                     progress: Callable[[str], None]) -> Dict[str, Timing]:
    """Time several steps, interleaving them in every repeat round.

    The order rotates from round to round (round r starts with step r), so
    no step always runs right after the same neighbour: what one step
    leaves behind (freed memory handed back to the OS, evicted caches) is
    spread over all of them.
    """
    for name, step in steps.items():
        for _ in range(warmup):
            step()
        _sync(device)
        progress(f'  warmed up {name}')
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            step = steps[name]
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
        progress(f'  round {round_index + 1}/{repeats}')
    return {
        name: Timing(statistics.median(s), min(s), max(s), s)
        for name, s in samples.items()
    }


def gemm_gflops(device: str, size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of one large fp32 ``torch.mm`` on this device."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def _read_status(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure_peak_memory_here(name: str, size: Tuple[int, int], batch: int,
                             mode: str, dtype_name: str, device: str,
                             threads: int, with_cp: bool,
                             baseline: Optional[str] = None
                             ) -> Dict[str, Any]:
    """Peak memory of one iteration (run this in a fresh process)."""
    torch.set_num_threads(threads)
    model = build_model(name, with_cp=with_cp, baseline=baseline).to(device)
    model.train(mode == 'fwdbwd')
    x = torch.randn(batch, 3, *size, device=device)
    step = make_step(model, x, mode, DTYPES[dtype_name])
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return dict(peak_bytes=torch.cuda.max_memory_allocated() - base,
                    what='cuda max_memory_allocated minus resident tensors')
    base = _read_status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM (peak RSS) to the current RSS
    step()
    rss_peak = _read_status('VmHWM') - base
    with LiveTensorPeak() as tracker:
        step()
    return dict(peak_bytes=tracker.peak_bytes, rss_peak_bytes=rss_peak,
                what='peak of live tensor storages during one iteration; '
                'rss: growth of peak RSS during one iteration')


def measure_peak_memory(name: str, size: Tuple[int, int], batch: int,
                        mode: str, dtype_name: str, device: str, threads: int,
                        with_cp: bool = False,
                        repeats: int = 1,
                        baseline: Optional[str] = None) -> Dict[str, Any]:
    """Median of ``repeats`` runs of :func:`measure_peak_memory_here`, each
    in a fresh subprocess (CPU peak RSS varies by a few % run to run)."""
    runs = [
        _measure_peak_memory_once(name, size, batch, mode, dtype_name,
                                  device, threads, with_cp, baseline)
        for _ in range(repeats)
    ]
    result = dict(runs[0])
    for key in ('peak_bytes', 'rss_peak_bytes'):
        if key in result:
            result[key + '_runs'] = [r[key] for r in runs]
            result[key] = statistics.median(result[key + '_runs'])
    return result


def _measure_peak_memory_once(name: str, size: Tuple[int, int], batch: int,
                              mode: str, dtype_name: str, device: str,
                              threads: int, with_cp: bool,
                              baseline: Optional[str]) -> Dict[str, Any]:
    args = dict(name=name, size=list(size), batch=batch, mode=mode,
                dtype_name=dtype_name, device=device, threads=threads,
                with_cp=with_cp, baseline=baseline)
    code = ('import json, sys; from mmdet_l2vit.analysis.benchmark import '
            'measure_peak_memory_here as m; a = json.loads(sys.argv[1]); '
            'a["size"] = tuple(a["size"]); print("RESULT", json.dumps(m(**a)))')
    result = subprocess.run([sys.executable, '-c', code, json.dumps(args)],
                            capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    raise RuntimeError(f'memory measurement of {name} at {size} failed:\n'
                       f'{result.stderr[-2000:]}')
