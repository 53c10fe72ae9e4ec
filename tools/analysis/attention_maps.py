r"""Paint the attention of chosen queries at chosen layers over an image.

One PNG per layer under --out-dir, one panel per query: the image under the
query's attention row (mean over heads, or --head), the query token
outlined. InLine weights (signed) use a diverging colour map centred at 0.
Works on any backbone of this package, trained or not, on the CPU.

Examples:
    python tools/analysis/attention_maps.py --type L2ViT --arch tiny \
        --checkpoint checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth \
        --image photo.jpg --points 120,80 300,200
    python tools/analysis/attention_maps.py \
        --config configs/demo/maskrcnn_l2vit_demo.py \
        --checkpoint work_dirs/demo_maskrcnn/iter_700.pth --grid 3 --effective
"""
import argparse
import os
import os.path as osp
import re
import time
from typing import List, Tuple

from mmdet_l2vit.analysis.attention import (capture_attention, grid_queries,
                                            point_queries)
from mmdet_l2vit.analysis.attention_report import (block_of,
                                                   effective_records,
                                                   select_layers)
from mmdet_l2vit.analysis.loading import (DEMO_IMAGES, add_backbone_arguments,
                                          backbone_from_args, image_paths,
                                          load_image)
from mmdet_l2vit.analysis.plots import plot_attention_overlays


def parse_point(text: str) -> Tuple[float, float]:
    """``'x,y'`` (image pixels) -> (x, y)."""
    try:
        x, y = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'a query point is x,y in image pixels, got {text!r}')
    return x, y


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    add_backbone_arguments(parser)
    parser.add_argument('--image', default=None,
                        help=f'image (default: the first of {DEMO_IMAGES})')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize the image first')
    parser.add_argument(
        '--layers', nargs='+',
        help='attention layers by name or index (default: the last of each '
        'stage); --list-layers prints them')
    parser.add_argument('--list-layers', action='store_true')
    queries = parser.add_mutually_exclusive_group()
    queries.add_argument('--points', nargs='+', type=parse_point,
                         help='query points x,y in image pixels')
    queries.add_argument('--grid', type=int, default=3,
                         help='an N x N query grid per layer (default 3)')
    parser.add_argument('--head', type=int,
                        help='one head (default: the mean over heads)')
    parser.add_argument(
        '--effective', action='store_true',
        help="also the effective maps of L2ViT's global blocks (input "
        'gradients of the block output at the query), with and without LCM')
    parser.add_argument(
        '--minus-mean', action='store_true',
        help='show each row minus its mean over the map (diverging colours; '
        'for InLine the part that differs between queries)')
    parser.add_argument('--out-dir', default='work_dirs/attention_maps')
    return parser.parse_args()


def file_name(layer: str) -> str:
    return re.sub(r'[^A-Za-z0-9.+-]+', '_', layer).strip('_') + '.png'


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    spec = backbone_from_args(args, args.checkpoint)
    path = args.image or image_paths([DEMO_IMAGES], 1)[0]
    image, picture = load_image(path, spec.normalisation, args.size)
    if args.points:
        sampler = point_queries(args.points, picture.shape[:2])
    else:
        sampler = grid_queries(args.grid)
    records = capture_attention(spec.model, image, sampler)
    if args.list_layers:
        for i, r in enumerate(records):
            print(f'{i:3d}  {r.name:<28} {r.kind:<20} {r.map_size}')
        return
    chosen = select_layers(records, args.layers)
    if args.effective:
        blocks = [block_of(r.name) for r in chosen]
        chosen += effective_records(spec.model, image, sampler, blocks)
    os.makedirs(args.out_dir, exist_ok=True)
    written: List[str] = []
    for record in chosen:
        out = osp.join(args.out_dir, file_name(record.name))
        title = (f'{spec.label}: {record.name} ({record.kind}, map '
                 f'{record.map_size[0]}x{record.map_size[1]}'
                 f"{'' if args.head is None else f', head {args.head}'}"
                 f"{', minus row mean' if args.minus_mean else ''})")
        head = None if record.kind == 'effective' else args.head
        plot_attention_overlays(picture, record, out, head, title,
                                minus_mean=args.minus_mean)
        written.append(out)
    print(f'{spec.label} on {path}: {len(written)} figures in '
          f'{args.out_dir}/ ({time.perf_counter() - start:.1f} s)')
    for out in written:
        print(f'  {out}')


if __name__ == '__main__':
    main()
