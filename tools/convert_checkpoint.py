r"""Convert an official L²ViT / InLine classification checkpoint into a
tensor-only backbone checkpoint for mmdet / mmsegmentation.

Example:
    python tools/convert_checkpoint.py \
        checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth \
        checkpoints/l2vit_tiny_backbone.pth
"""
import argparse
import sys

from mmdet_l2vit.checkpoint import CheckpointError
from mmdet_l2vit.convert import backbone_classes, convert_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint, as released')
    parser.add_argument('dst', help='output file (tensors only)')
    parser.add_argument(
        '--type', choices=sorted(backbone_classes()), default=None,
        help='backbone type; detected from the keys when omitted')
    parser.add_argument(
        '--checkpoint-key', default=None,
        help="entry to convert, e.g. 'model_ema' (default: 'model', as the "
        'official loaders use)')
    parser.add_argument(
        '--out-indices', type=int, nargs='+', default=[0, 1, 2, 3],
        help='stages whose output norms norm{i} are created')
    parser.add_argument(
        '--trust-pickle', action='store_true',
        help='read SRC with full pickle (only for files you trust)')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        summary = convert_checkpoint(
            args.src, args.dst, model_type=args.type,
            checkpoint_key=args.checkpoint_key, out_indices=args.out_indices,
            trust_pickle=args.trust_pickle)
    except (CheckpointError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'{summary.family} checkpoint, entry {summary.source!r}, '
          f'arch {summary.arch}')
    print(f'kept    {len(summary.kept)} keys')
    print(f'dropped {len(summary.dropped)} keys: {summary.dropped}')
    print(f'new     {len(summary.created)} keys: {summary.created}')
    print(f'wrote {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
