r"""Attention statistics per layer over a set of images.

For each attention layer (in depth order): the entropy of the attention
rows (of |w| normalised, nats, and divided by log N), the share of |w| in
the query's 3x3 and 7x7 neighbourhoods, and injectivity collisions (pairs
of grid queries with nearly identical rows), averaged over the images.
Writes stats.json and one plot per metric against depth under --out-dir.
Several --checkpoint files are several runs in one plot; --compare adds
the runs of earlier stats.json files (e.g. another setting).

Examples:
    python tools/generate_demo_data.py --if-missing
    python tools/analysis/attention_stats.py --type L2ViT \
        --checkpoint work_dirs/demo_pretrain/l2vit_demo_cls.pth none
    python tools/analysis/attention_stats.py --type L2ViT --arch tiny \
        --backbone-args denominator_floor=None --label 'no floor' \
        --compare work_dirs/attention_stats/stats.json --out-dir work_dirs/b
"""
import argparse
import json
import os
import os.path as osp
import time
from typing import Any, Dict, List

from mmdet_l2vit.analysis.attention_metrics import DISTANCES
from mmdet_l2vit.analysis.attention_report import (MEAN_METRICS,
                                                   attention_statistics)
from mmdet_l2vit.analysis.loading import (DEMO_IMAGES, add_backbone_arguments,
                                          backbone_from_args, image_paths)
from mmdet_l2vit.analysis.plots import plot_metric_against_depth

#: The plotted metrics and their axis labels.
PLOTS = dict(
    entropy='row entropy of |w| (nats)',
    normalised_entropy='row entropy / log N',
    local_share_3='share of |w| in the 3x3 neighbourhood',
    local_share_7='share of |w| in the 7x7 neighbourhood',
    collision_fraction='colliding query pairs (fraction)')
assert set(MEAN_METRICS) <= set(PLOTS)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    add_backbone_arguments(parser, checkpoints=True)
    parser.add_argument('--images', nargs='+', default=[DEMO_IMAGES],
                        help='image files or folders')
    parser.add_argument('--num-images', type=int, default=8,
                        help='at most this many, evenly spaced (default 8)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize the images (default: native size)')
    parser.add_argument('--grid', type=int, default=8,
                        help='N x N query grid per layer (default 8)')
    parser.add_argument('--threshold', type=float, default=1e-3,
                        help='collision distance threshold (default 1e-3)')
    parser.add_argument('--metric', choices=DISTANCES, default='max_abs',
                        help='collision distance (default max_abs: max '
                        '|w_i - w_j| over the larger row maximum)')
    parser.add_argument(
        '--effective', type=int, default=0, metavar='N',
        help="also the effective maps of L2ViT's global blocks with and "
        'without the LCM, on an N x N query grid (one backward per query)')
    parser.add_argument('--label', nargs='+',
                        help='run labels (one per --checkpoint)')
    parser.add_argument('--compare', nargs='+', default=[],
                        help='stats.json files whose runs join the plots')
    parser.add_argument('--out-dir', default='work_dirs/attention_stats')
    return parser.parse_args()


def split_effective(label: str, layers: List[Dict]) -> List[tuple]:
    """The attention layers and each kind of effective map as own runs."""
    groups: Dict[str, List[Dict]] = {}
    for layer in layers:
        tag = layer['name'].split(' [')[1][:-1] if ' [' in \
            layer['name'] else ''
        groups.setdefault(tag, []).append(layer)
    return [(f'{label} [{tag}]' if tag else label, group)
            for tag, group in groups.items()]


def run(args: argparse.Namespace, checkpoint: Any, label: Any,
        paths: List[str]) -> Dict[str, Any]:
    start = time.perf_counter()
    checkpoint = None if checkpoint in (None, 'none') else checkpoint
    spec = backbone_from_args(args, checkpoint)
    layers = attention_statistics(
        spec.model, paths, spec.normalisation,
        tuple(args.size) if args.size else None, args.grid, args.threshold,
        args.metric, args.effective)
    seconds = time.perf_counter() - start
    label = label or spec.label + ('' if checkpoint else ' (random init)')
    print(f'{label}: {len(layers)} layers, {len(paths)} images, '
          f'{seconds:.1f} s')
    for layer in layers:
        print(f"  {layer['name']:<32} {layer['kind']:<20} "
              f"H={layer['entropy']:6.3f} H/logN="
              f"{layer['normalised_entropy']:.3f} "
              f"3x3={layer['local_share_3']:.3f} "
              f"7x7={layer['local_share_7']:.3f} "
              f"collisions={layer['collisions']}/{layer['pairs']}")
    return dict(label=label, config=args.config, type=args.type,
                arch=args.arch, checkpoint=checkpoint,
                backbone_args=args.backbone_args, images=paths,
                size=args.size, grid=args.grid, threshold=args.threshold,
                metric=args.metric, seconds=seconds, layers=layers)


def main() -> None:
    args = parse_args()
    checkpoints = args.checkpoint or [None]
    labels = args.label or [None] * len(checkpoints)
    if len(labels) != len(checkpoints):
        raise SystemExit('error: give one --label per --checkpoint')
    paths = image_paths(args.images, args.num_images)
    runs = [run(args, c, l, paths) for c, l in zip(checkpoints, labels)]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'stats.json'), 'w') as f:
        json.dump(dict(runs=runs), f, indent=1)
    earlier = []
    for path in args.compare:
        with open(path) as f:
            earlier += json.load(f)['runs']
    series = [s for r in runs + earlier
              for s in split_effective(r['label'], r['layers'])]
    for metric, ylabel in PLOTS.items():
        plot_metric_against_depth(series, metric,
                                  osp.join(args.out_dir, f'{metric}.png'),
                                  ylabel)
    print(f"wrote {osp.join(args.out_dir, 'stats.json')} and "
          f'{len(PLOTS)} plots')


if __name__ == '__main__':
    main()
