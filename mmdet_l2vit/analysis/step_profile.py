"""Where the time of one training step goes, grouped by kind of op.

:func:`profile_step` runs one forward + backward under ``torch.profiler`` and
sums the self CPU time of every ATen op into a kind (:data:`OP_KINDS`) and a
phase (forward or backward, from the ``record_function`` range the op ran
in). ``tools/benchmark.py --profile`` prints the table
(:func:`profile_markdown`) for each model; docs/benchmarks.md shows it before
and after a change.
"""
import re
from collections import defaultdict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

#: Op kinds, the first matching pattern of an ATen op name wins.
OP_KINDS: Tuple[Tuple[str, str], ...] = (
    ('attention (SDPA)', r'scaled_dot_product|flash_attention|_sdpa|'
     r'_efficient_attention'),
    ('conv', r'conv|mkldnn_convolution'),
    ('matmul / linear', r'^aten::(mm|addmm|bmm|baddbmm|matmul|linear|'
     r'addmv|mv|dot)_?$|_addmm_activation'),
    ('layer norm', r'layer_norm'),
    ('GELU / softmax / ReLU', r'gelu|softmax|relu|threshold_backward|'
     r'leaky_relu'),
    ('copy / layout', r'copy_|clone|contiguous|_to_copy|cat$|index|'
     r'constant_pad|pad|roll|narrow_copy|stack|flip|unfold|col2im|im2col'),
    ('fill / zero', r'zero_|fill_|zeros|empty|full'),
    ('reduction', r'sum|mean|norm|amax|max|min|var|std'),
    ('elementwise', r'add|mul|div|sub|neg|where|rsub|sqrt|exp|pow|'
     r'reciprocal|clamp|masked'),
)
#: The ``record_function`` ranges of the two phases.
PHASES = ('forward', 'backward')


def op_kind(name: str) -> str:
    """The kind of an ATen op name (``'other'`` if no pattern matches)."""
    for kind, pattern in OP_KINDS:
        if re.search(pattern, name):
            return kind
    return 'other'


def _phase(event) -> str:
    """The phase range an event ran under (``''`` outside both)."""
    while event is not None:
        if event.name in PHASES:
            return event.name
        event = event.cpu_parent
    return ''


def profile_step(step: Callable[[], torch.Tensor],
                 model: nn.Module) -> Dict[Tuple[str, str], float]:
    """Self CPU milliseconds of one training step per (phase, kind).

    Args:
        step (callable): Runs the forward and returns the scalar to
            backpropagate.
        model (nn.Module): Whose gradients are cleared afterwards.

    Returns:
        dict: ``{(phase, kind): ms}``, phases of :data:`PHASES`.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function('forward'):
            loss = step()
        with record_function('backward'):
            loss.backward()
    model.zero_grad(set_to_none=True)
    totals: Dict[Tuple[str, str], float] = defaultdict(float)
    for event in prof.events():
        if not event.name.startswith('aten::'):
            continue
        phase = _phase(event)
        if phase:
            totals[(phase, op_kind(event.name))] += \
                event.self_cpu_time_total / 1e3
    return dict(totals)


def profile_markdown(profiles: Dict[str, Dict[Tuple[str, str], float]]
                     ) -> str:
    """A Markdown table: one row per kind, forward / backward ms per model.

    Args:
        profiles (dict): ``{model name: profile_step result}``.
    """
    names: Sequence[str] = list(profiles)
    kinds: List[str] = [k for k, _ in OP_KINDS] + ['other']
    header = '| kind | ' + ' | '.join(
        f'{n} fwd ms | {n} bwd ms' for n in names) + ' |'
    lines = [header, '|---|' + '---|---|' * len(names)]
    for kind in kinds + ['total']:
        cells = []
        for name in names:
            for phase in PHASES:
                cells.append(sum(
                    ms for (p, k), ms in profiles[name].items()
                    if p == phase and (kind == 'total' or k == kind)))
        if kind != 'total' and not any(c >= 0.5 for c in cells):
            continue
        label = f'**{kind}**' if kind == 'total' else kind
        lines.append(f'| {label} | ' + ' | '.join(f'{c:.0f}' for c in cells)
                     + ' |')
    return '\n'.join(lines) + '\n'
