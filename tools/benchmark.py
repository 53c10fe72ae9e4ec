r"""Benchmark backbone latency and peak memory against mmdet's own backbones.

For each resolution, every model is timed in the same process, interleaved
round by round (forward under no_grad, then forward+backward); median and
spread are reported, with achieved GFLOP/s next to a large ``torch.mm`` on
the same threads. Peak memory is measured per case in fresh subprocesses:
the peak of tensor memory allocated by one iteration (CUDA:
max_memory_allocated; CPU: live tensor storages counted at the ATen level)
and, on CPU, the growth of peak RSS during one iteration.

Example (the first table in docs/benchmarks.md; --report re-renders it):
    python tools/benchmark.py --threads 2 --repeats 5 --warmup 1 \
        --modes fwd --memory-repeats 1 --out work_dirs/benchmark_fwd
    python tools/benchmark.py --report work_dirs/benchmark_fwd/results.json
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Any, Dict, List

import torch

from mmdet_l2vit.analysis.benchmark import (BASELINE_SUFFIX, DTYPES,
                                            MODEL_SPECS,
                                            baseline_names, build_model,
                                            gemm_gflops, make_loss_step,
                                            make_step,
                                            measure_peak_memory, parse_size,
                                            time_interleaved)
from mmdet_l2vit.analysis.flops import count_macs
from mmdet_l2vit.analysis.step_profile import profile_markdown, profile_step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--models', nargs='+', default=list(MODEL_SPECS),
                        choices=list(MODEL_SPECS))
    parser.add_argument('--sizes', nargs='+',
                        default=['224', '512', '800x1216', '1024', '1536',
                                 '2048'], help="e.g. 1024 or 800x1216")
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwdbwd'],
                        choices=['fwd', 'fwdbwd'])
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the per-case peak-memory subprocesses')
    parser.add_argument('--memory-repeats', type=int, default=3,
                        help='fresh subprocesses per memory case (median)')
    parser.add_argument('--with-cp', action='store_true',
                        help='gradient checkpointing in the backbones')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile our backbones (first call per '
                        'size compiles: use --warmup >= 1)')
    parser.add_argument(
        '--baseline', metavar='CHECKOUT',
        help='also time our backbones as another checkout of this '
        'repository has them (e.g. `git worktree add /tmp/base COMMIT`), '
        'interleaved in the same run; they appear as "<model> @baseline"')
    parser.add_argument('--profile', action='store_true',
                        help='also profile one training step of each model '
                        'per size (torch.profiler, self CPU time grouped by '
                        'kind of op, forward and backward): profile.md')
    parser.add_argument('--out', default='work_dirs/benchmark',
                        help='directory for results.json and plot.png')
    parser.add_argument('--report', metavar='RESULTS_JSON',
                        help='measure nothing: re-render the table, '
                        'results.md and plot.png of an earlier results.json '
                        '(into its directory)')
    return parser.parse_args()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_models(models: Dict[str, torch.nn.Module], x: torch.Tensor,
                   dtype: torch.dtype) -> Dict[str, Dict[str, float]]:
    """One profiled training step per model (after one unprofiled), as
    ``{model: {'phase/kind': ms}}``."""
    profiles = {}
    for name, model in models.items():
        progress(f'  profiling one step of {name} ...')
        model.train()
        step = make_loss_step(model, x, dtype)
        make_step(model, x, 'fwdbwd', dtype)()
        profiles[name] = {f'{phase}/{kind}': ms for (phase, kind), ms in
                          profile_step(step, model).items()}
    return profiles


def profile_report(report: Dict[str, Any]) -> str:
    """profile.md: the grouped step profile per size, one table per model
    (beside its baseline, if there is one)."""
    parts = [f"`{report['command']}`", '']
    for size, profiles in report.get('profiles', {}).items():
        parsed = {name: {tuple(key.split('/', 1)): ms
                         for key, ms in profile.items()}
                  for name, profile in profiles.items()}
        parts += [f'{size}, self CPU time of one training step (ms):', '']
        for name in parsed:
            if name.endswith(BASELINE_SUFFIX):
                continue
            group = [name] + [n for n in (name + BASELINE_SUFFIX, )
                              if n in parsed]
            parts += [profile_markdown({n: parsed[n] for n in group}), '']
    return '\n'.join(parts)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    progress(f'torch.mm reference on {args.threads} threads ...')
    reference = gemm_gflops(args.device)
    models = {}
    names = list(args.models)
    if args.baseline:
        names += baseline_names(args.models)
    for name in names:
        models[name] = build_model(name, with_cp=args.with_cp,
                                   compile=args.compile,
                                   baseline=args.baseline).to(args.device)
    dtype = DTYPES[args.dtype]
    rows: List[Dict[str, Any]] = []
    profiles: Dict[str, Any] = {}
    for size_text in args.sizes:
        size = parse_size(size_text)
        x = torch.randn(args.batch, 3, *size, device=args.device)
        for mode in args.modes:
            progress(f'{size[0]}x{size[1]} {mode}:')
            steps = {}
            for name, model in models.items():
                model.train(mode == 'fwdbwd')
                steps[name] = make_step(model, x, mode, dtype)
            timings = time_interleaved(steps, args.device, args.warmup,
                                       args.repeats, progress)
            for name, timing in timings.items():
                row = dict(model=name, size=list(size), mode=mode,
                           median_s=timing.median, min_s=timing.low,
                           max_s=timing.high, samples_s=timing.samples)
                if mode == 'fwd':
                    macs, _ = count_macs(models[name].cpu(), size)
                    models[name].to(args.device)
                    row['gmacs'] = macs / 1e9
                    row['gflops_per_s'] = 2 * macs * args.batch / \
                        timing.median / 1e9
                if not args.no_memory:
                    progress(f'  peak memory of {name} ...')
                    row.update(measure_peak_memory(
                        name, size, args.batch, mode, args.dtype,
                        args.device, args.threads, args.with_cp,
                        args.memory_repeats, args.baseline))
                rows.append(row)
        if args.profile:
            profiles[f'{size[0]}x{size[1]}'] = profile_models(models, x,
                                                               dtype)
    command = 'python tools/benchmark.py ' + ' '.join(
        repr(a) if ' ' in a else a for a in sys.argv[1:])
    return dict(command=command, threads=args.threads,
                device=args.device, dtype=args.dtype, batch=args.batch,
                torch=torch.__version__, mm_gflops_per_s=reference,
                profiles=profiles,
                results=rows)


#: The model every row's time is compared with (same size and mode).
ANCHOR = 'Swin-T (mmdet)'


def anchor_ratio(report: Dict[str, Any], row: Dict[str, Any]) -> str:
    """``row``'s median time over the anchor's in the same run, as text."""
    for other in report['results']:
        if (other['model'] == ANCHOR and other['size'] == row['size']
                and other['mode'] == row['mode']):
            return f"{row['median_s'] / other['median_s']:.2f}"
    return ''


def scaling(report: Dict[str, Any]) -> List[str]:
    """Time and peak-memory ratios between each size and the size with
    half its side (e.g. 2048x2048 over 1024x1024), per model and mode."""
    rows = {(r['model'], r['mode'], tuple(r['size'])): r
            for r in report['results']}
    lines = []
    for (name, mode, size), row in rows.items():
        half = rows.get((name, mode, (size[0] // 2, size[1] // 2)))
        if half is None or size[0] % 2 or size[1] % 2:
            continue
        text = (f"{name} {mode} {size[0]}x{size[1]} / "
                f"{half['size'][0]}x{half['size'][1]}: time "
                f"{row['median_s'] / half['median_s']:.2f}")
        if row.get('peak_bytes') and half.get('peak_bytes'):
            memory = row['peak_bytes'] / half['peak_bytes']
            text += f', peak memory {memory:.2f}'
        lines.append(text + ' (4.00 = linear in pixels)')
    return lines


def print_table(report: Dict[str, Any]) -> None:
    print(f"\ndevice {report['device']}, {report['threads']} threads, "
          f"{report['dtype']}, batch {report['batch']}; torch.mm: "
          f"{report['mm_gflops_per_s']:.1f} GFLOP/s")
    header = (f"{'model':<28} {'size':>10} {'mode':>7} {'median ms':>10} "
              f"{'min-max ms':>17} {'x Swin-T':>8} {'GFLOP/s':>8} {'% mm':>5} "
              f"{'peak MiB':>9} {'RSS MiB':>8}")
    print(header)
    print('-' * len(header))
    for row in report['results']:
        size = f"{row['size'][0]}x{row['size'][1]}"
        spread = f"{row['min_s'] * 1e3:.0f}-{row['max_s'] * 1e3:.0f}"
        gflops = row.get('gflops_per_s')
        rate = f'{gflops:8.1f}' if gflops else ' ' * 8
        share = (f"{100 * gflops / report['mm_gflops_per_s']:5.0f}"
                 if gflops else ' ' * 5)
        memory = (f"{row['peak_bytes'] / 2**20:9.0f}"
                  if 'peak_bytes' in row else ' ' * 9)
        rss = (f"{row['rss_peak_bytes'] / 2**20:8.0f}"
               if 'rss_peak_bytes' in row else ' ' * 8)
        print(f"{row['model']:<28} {size:>10} {row['mode']:>7} "
              f"{row['median_s'] * 1e3:10.1f} {spread:>17} "
              f"{anchor_ratio(report, row):>8} {rate} {share} "
              f'{memory} {rss}')


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'unknown CPU'


def markdown(report: Dict[str, Any]) -> str:
    """The table as Markdown, with the command and the machine."""
    device = (torch.cuda.get_device_name()
              if report['device'] == 'cuda' else cpu_name())
    lines = [
        f"`{report['command']}`", '',
        f"{device}, {report['threads']} threads, {report['dtype']}, batch "
        f"{report['batch']}, torch {report['torch']}; large `torch.mm`: "
        f"{report['mm_gflops_per_s']:.1f} GFLOP/s", '',
        '| model | size | mode | median ms | min-max ms | x Swin-T | GFLOP/s '
        '| % of mm | peak MiB | RSS MiB |',
        '|---|---|---|---|---|---|---|---|---|---|'
    ]
    for row in report['results']:
        gflops = row.get('gflops_per_s')
        lines.append(
            f"| {row['model']} | {row['size'][0]}x{row['size'][1]} | "
            f"{row['mode']} | {row['median_s'] * 1e3:.0f} | "
            f"{row['min_s'] * 1e3:.0f}-{row['max_s'] * 1e3:.0f} | "
            f'{anchor_ratio(report, row)} | '
            + (f'{gflops:.1f} | '
               f"{100 * gflops / report['mm_gflops_per_s']:.0f}% | "
               if gflops else ' | | ') +
            (f"{row['peak_bytes'] / 2**20:.0f} |"
             if 'peak_bytes' in row else ' |') +
            (f" {row['rss_peak_bytes'] / 2**20:.0f} |"
             if 'rss_peak_bytes' in row else ' |'))
    ratios = scaling(report)
    if ratios:
        lines += ['', 'Scaling (median times; peak tensor memory):', '']
        lines += [f'- {line}' for line in ratios]
    return '\n'.join(lines) + '\n'


def plot(report: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], 'median_s', 'time (s)'),
                           (axes[1], 'peak_bytes',
                            'peak tensor memory (bytes)')):
        for (name, mode) in sorted({(r['model'], r['mode'])
                                    for r in report['results']}):
            rows = [r for r in report['results'] if r['model'] == name
                    and r['mode'] == mode and key in r]
            if not rows:
                continue
            pixels = [r['size'][0] * r['size'][1] for r in rows]
            values = [r[key] for r in rows]
            ax.plot(pixels, values, marker='o',
                    linestyle='-' if mode == 'fwd' else '--',
                    label=f'{name} {mode}')
            if name.startswith('L2ViT') and mode == 'fwd':
                ax.plot(pixels, [values[0] * p / pixels[0] for p in pixels],
                        color='gray', linestyle=':',
                        label='linear scaling from L2ViT-T')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('pixels (H x W)')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report['device']}, {report['threads']} threads, "
                 f"{report['dtype']}, batch {report['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    if args.report:
        with open(args.report) as f:
            report = json.load(f)
        args.out = osp.dirname(osp.abspath(args.report))
    else:
        report = run(args)
        os.makedirs(args.out, exist_ok=True)
        with open(osp.join(args.out, 'results.json'), 'w') as f:
            json.dump(report, f, indent=1)
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(markdown(report))
    plot(report, osp.join(args.out, 'plot.png'))
    if report.get('profiles'):
        with open(osp.join(args.out, 'profile.md'), 'w') as f:
            f.write(profile_report(report))
        print(profile_report(report))
    print_table(report)
    for line in scaling(report):
        print(line)
    written = 'results.md, plot.png' if args.report else \
        'results.json, results.md, plot.png'
    if report.get('profiles'):
        written += ', profile.md'
    print(f'\nwrote {written} in {args.out}')


if __name__ == '__main__':
    main()
