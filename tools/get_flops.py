"""Count a backbone's multiply-accumulates (the papers' "FLOPs").

Examples:
    python tools/get_flops.py L2ViT tiny --shape 224 224
    python tools/get_flops.py L2ViT base-384 --shape 384 384 --per-stage
"""
import argparse

from mmdet_l2vit.analysis.flops import count_macs
from mmdet_l2vit.convert import backbone_classes


def main() -> None:
    classes = backbone_classes()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('type', choices=sorted(classes), help='backbone')
    parser.add_argument('arch', help="arch name, e.g. 'tiny'")
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'))
    parser.add_argument('--out-indices', type=int, nargs='+',
                        default=[0, 1, 2, 3])
    parser.add_argument('--per-stage', action='store_true',
                        help='print the breakdown per stage')
    args = parser.parse_args()
    model = classes[args.type](arch=args.arch,
                               out_indices=tuple(args.out_indices))
    params = sum(p.numel() for p in model.parameters())
    total, breakdown = count_macs(model, tuple(args.shape))
    print(f'{args.type}-{args.arch} @ {args.shape[0]}x{args.shape[1]}: '
          f'{total / 1e9:.3f} GMACs, {params / 1e6:.2f} M params')
    if args.per_stage:
        for name, macs in breakdown.items():
            print(f'  {name:<24} {macs / 1e9:8.3f} GMACs '
                  f'({100 * macs / total:5.1f}%)')


if __name__ == '__main__':
    main()
