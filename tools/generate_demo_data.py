"""Write the synthetic demo dataset (COCO instances + ADE20K-style label maps).

Usage: python tools/generate_demo_data.py [--root data/demo] [--seed 0]
       [--train 800] [--val 120] [--if-missing]

Deterministic: the same arguments always write the same files.
"""
import argparse
import sys
import time

from mmdet_l2vit.datasets.demo_data import (DEFAULT_ROOT, DEFAULT_SIZES,
                                            demo_data_ready,
                                            generate_demo_data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=DEFAULT_ROOT)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train', type=int, default=DEFAULT_SIZES['train'],
                        help='training images')
    parser.add_argument('--val', type=int, default=DEFAULT_SIZES['val'],
                        help='held-out (validation) images')
    parser.add_argument('--if-missing', action='store_true',
                        help='do nothing if the data is already there')
    args = parser.parse_args()
    sizes = dict(train=args.train, val=args.val)
    if args.if_missing and demo_data_ready(args.root, args.seed, sizes):
        print(f'demo data already in {args.root}/ (seed {args.seed})')
        return 0
    start = time.perf_counter()
    summary = generate_demo_data(args.root, args.seed, sizes)
    for split, info in summary.items():
        print(f'{split}: {info["images"]} images, {info["instances"]} '
              'instances')
    print(f'wrote {args.root}/coco and {args.root}/ade in '
          f'{time.perf_counter() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
