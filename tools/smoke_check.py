"""Backbone smoke check: build every backbone through the mmdet and mmseg
registries from config dicts and run one forward pass on random images.

Usage: python tools/smoke_check.py [--size H W]
"""
import argparse
import time

import torch
from mmengine.registry import init_default_scope

import mmdet_l2vit  # noqa: F401  (registers the backbones)
from mmdet_l2vit.convert import backbone_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, nargs=2, default=[512, 512],
                        metavar=('H', 'W'))
    args = parser.parse_args()
    x = torch.randn(1, 3, *args.size)
    for scope in ('mmdet', 'mmseg'):
        init_default_scope(scope)
        registry = __import__(f'{scope}.registry',
                              fromlist=['MODELS']).MODELS
        for name in sorted(backbone_classes().values(),
                           key=lambda c: c.__name__):
            model = registry.build(dict(type=name.__name__,
                                        arch='tiny')).eval()
            start = time.perf_counter()
            with torch.no_grad():
                outs = model(x)
            seconds = time.perf_counter() - start
            shapes = ', '.join(str(tuple(o.shape)) for o in outs)
            print(f'[{scope}] {name.__name__}-tiny {tuple(x.shape)} -> '
                  f'{shapes}  ({seconds:.2f} s)')
    print('smoke check passed')


if __name__ == '__main__':
    main()
