"""Pretrain a demo classifier on the shape crops; write it in the official
checkpoint layout of its family.

Usage: python tools/pretrain_demo.py --model l2vit_demo
       [--out work_dirs/demo_pretrain/l2vit_demo_cls.pth] [--iters N]
       [--batch-size B] [--crop-size 32] [--lr LR] [--seed 0] [--threads 2]
       [--if-missing]

``--model`` is ``l2vit_demo``, ``inline_pvt_demo`` or ``inline_swin_demo``
(timm's registry). The crops are rendered deterministically from the seed by
the demo data's shapes generator (one shape class per crop, background
clutter kept; held-out crops from their own seed stream). Progress and ETA
are logged like the runner's; the held-out top-1 is logged at the end. The
checkpoint is what the official training script of the family writes (L2ViT:
model, model_ema, optimizer, epoch, scaler, args; InLine: model, optimizer,
lr_scheduler, max_accuracy, epoch, config), so the demo configs read it
through ``init_cfg=dict(type='Pretrained', checkpoint=...)`` as the COCO and
ADE20K configs read the released ImageNet files.
"""
import argparse
import os.path as osp
import sys

from mmdet_l2vit.engine.pretrain import (PretrainSettings,
                                         default_checkpoint_path,
                                         pretrain_demo_classifier)

MODELS = ('l2vit_demo', 'inline_pvt_demo', 'inline_swin_demo')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, choices=MODELS)
    parser.add_argument('--out', help='checkpoint path (default: '
                        'work_dirs/demo_pretrain/MODEL_cls.pth)')
    parser.add_argument('--iters', type=int, default=PretrainSettings.iters,
                        help='default: the family\'s (FAMILY_DEFAULTS)')
    parser.add_argument('--batch-size', type=int,
                        default=PretrainSettings.batch_size)
    parser.add_argument('--crop-size', type=int,
                        default=PretrainSettings.crop_size)
    parser.add_argument('--lr', type=float, default=PretrainSettings.lr,
                        help='default: the family\'s (FAMILY_DEFAULTS)')
    parser.add_argument('--seed', type=int, default=PretrainSettings.seed)
    parser.add_argument('--threads', type=int, default=2,
                        help='torch compute threads (the crops are in '
                        'memory, no data workers)')
    parser.add_argument('--if-missing', action='store_true',
                        help='do nothing if the checkpoint exists')
    args = parser.parse_args()
    out = args.out or default_checkpoint_path(args.model)
    if args.if_missing and osp.isfile(out):
        print(f'demo classifier already in {out} (delete it to pretrain '
              'again)')
        return 0
    result = pretrain_demo_classifier(
        args.model, out, iters=args.iters, batch_size=args.batch_size,
        crop_size=args.crop_size, lr=args.lr, seed=args.seed,
        num_threads=args.threads, log_interval=100)
    print(f'{args.model}: held-out top-1 {result["top1"]:.1f}% (model), '
          f'{result["top1_ema"]:.1f}% (ema); {result["seconds"]:.0f} s; '
          f'{result["family"]} layout: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
