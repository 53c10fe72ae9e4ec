r"""Effective receptive field of a backbone stage, over a set of images.

The mean absolute input gradient of the central output position (of the sum
of its ReLU'd channels, as RepLKNet; --score) of one of the backbone's
outputs, as a heat map PNG (log
scale) with the radii (input pixels, around the central position) that hold
20 / 50 / 80 % of its mass, and erf.json / erf.npy. Works for this package's
backbones and for any mmdet / mmseg backbone config, e.g. mmdet's Swin-T:

Examples:
    python tools/generate_demo_data.py --if-missing
    python tools/analysis/erf.py --type L2ViT --arch tiny \
        --out-dir work_dirs/erf/l2vit_t
    python tools/analysis/erf.py \
        --config mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        --out-dir work_dirs/erf/swin_t
    python tools/analysis/erf.py --type SwinTransformer --scope mmdet \
        --backbone-args window_size=7 --stage 2
"""
import argparse
import json
import os
import os.path as osp
import time

import numpy as np

from mmdet_l2vit.analysis.erf import (SCORES, effective_receptive_field,
                                      mass_radii)
from mmdet_l2vit.analysis.loading import (DEMO_IMAGES, add_backbone_arguments,
                                          backbone_from_args, image_paths,
                                          load_image)
from mmdet_l2vit.analysis.plots import plot_erf


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    add_backbone_arguments(parser)
    parser.add_argument('--images', nargs='+', default=[DEMO_IMAGES],
                        help='image files or folders')
    parser.add_argument('--num-images', type=int, default=8,
                        help='at most this many, evenly spaced (default 8)')
    parser.add_argument('--size', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'),
                        help='images are resized to this (default 224 224)')
    parser.add_argument(
        '--stage', type=int, default=-1,
        help='index into the backbone outputs (the stage for backbones '
        'returning all four; default -1, the last)')
    parser.add_argument(
        '--score', choices=sorted(SCORES), default='relu_sum',
        help='what of the central feature is differentiated (default '
        'relu_sum, as RepLKNet; a plain sum is zero after a LayerNorm)')
    parser.add_argument('--fractions', type=float, nargs='+',
                        default=[0.2, 0.5, 0.8])
    parser.add_argument('--out-dir', default='work_dirs/erf')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    spec = backbone_from_args(args, args.checkpoint)
    paths = image_paths(args.images, args.num_images)
    images = (load_image(p, spec.normalisation, tuple(args.size))[0]
              for p in paths)
    erf = effective_receptive_field(spec.model, images, args.stage,
                                    args.score)
    radii = mass_radii(erf.heat, erf.centre, args.fractions)
    os.makedirs(args.out_dir, exist_ok=True)
    title = (f'ERF {spec.label}, output {args.stage} '
             f'({erf.output_size[0]}x{erf.output_size[1]}), '
             f'{erf.num_images} images at {args.size[0]}x{args.size[1]}')
    plot_erf(erf.heat, erf.centre, radii, osp.join(args.out_dir, 'erf.png'),
             title)
    np.save(osp.join(args.out_dir, 'erf.npy'), erf.heat.numpy())
    seconds = time.perf_counter() - start
    result = dict(label=spec.label, config=args.config, type=args.type,
                  arch=args.arch, checkpoint=args.checkpoint,
                  stage=args.stage, score=args.score, size=args.size,
                  images=paths,
                  output_size=list(erf.output_size), centre=erf.centre,
                  radii={f'{f:g}': r for f, r in radii.items()},
                  seconds=seconds)
    with open(osp.join(args.out_dir, 'erf.json'), 'w') as f:
        json.dump(result, f, indent=1)
    shares = ', '.join(f'{f:.0%}: {r:.1f} px' for f, r in radii.items())
    print(f'{title}: radii {shares} ({seconds:.1f} s); wrote '
          f'{args.out_dir}/erf.png, erf.json, erf.npy')


if __name__ == '__main__':
    main()
