"""The main job on the embedded default data (what `make demo` runs).

1. generate the synthetic shapes dataset in data/demo/ if it is missing;
2. pretrain the demo classifier (reduced L2ViT, shape crops) with
   tools/pretrain_demo.py if its official-layout checkpoint is missing;
3. fine-tune the demo Mask R-CNN from it on the CPU with tools/train.py
   (the config's init_cfg=dict(type='Pretrained', ...));
4. test the last checkpoint on the held-out split with tools/test.py, print
   box AP / mask AP (COCO metric), save the painted predictions (the
   toolbox visualizer) under the work dir and tile a contact sheet of them.

Usage: python tools/demo.py [--work-dir work_dirs/demo_maskrcnn] [--fresh]
       [--config configs/demo/maskrcnn_l2vit_demo.py] [--threads 1]
Relative paths are relative to the repository root, where the demo works.

An interrupted demo continues from its last checkpoint when run again;
--fresh starts over. Training uses one compute thread and one data worker
(--threads): on two cores this is the fastest setting, and it degrades
gracefully when other jobs share the machine.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

from mmengine.config import Config

from mmdet_l2vit.datasets.demo_data import ensure_demo_data
from mmdet_l2vit.visualization import make_contact_sheet

#: The repository root. The demo works from here, so the configs' relative
#: paths (``configs/...``, ``data/demo``) and ``--work-dir`` resolve the same
#: way for this script and the tools it runs.
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run(args: list, env: dict) -> None:
    print('$ ' + ' '.join(args), flush=True)
    subprocess.run(args, env=env, check=True)


def last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config',
                        default='configs/demo/maskrcnn_l2vit_demo.py')
    parser.add_argument('--work-dir', default='work_dirs/demo_maskrcnn')
    parser.add_argument('--fresh', action='store_true',
                        help='delete the work dir and the demo classifier '
                        'and start over')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch compute threads (OMP_NUM_THREADS)')
    args = parser.parse_args()
    os.chdir(ROOT)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    if ensure_demo_data():
        print(f'generated the demo data in data/demo/ '
              f'({time.perf_counter() - start:.0f} s)')
    cfg = Config.fromfile(args.config)
    init_cfg = cfg.model.backbone.get('init_cfg') or {}
    # The demo classifier the config starts from (none for a scratch twin).
    pretrained = init_cfg.get('checkpoint')
    if args.fresh:
        shutil.rmtree(args.work_dir, ignore_errors=True)
        if pretrained and osp.exists(pretrained):
            os.remove(pretrained)

    t0 = time.perf_counter()
    if pretrained:
        model = osp.basename(pretrained)[:-len('_cls.pth')]
        run([sys.executable, 'tools/pretrain_demo.py', '--model', model,
             '--out', pretrained, '--if-missing'], env)
    pretrain_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Validation is skipped during training: the test below evaluates the
    # same held-out split.
    run([sys.executable, 'tools/train.py', args.config, '--work-dir',
         args.work_dir, '--resume', '--cfg-options', 'val_cfg=None',
         'val_dataloader=None', 'val_evaluator=None'], env)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics_file = osp.join(args.work_dir, 'test_metrics.json')
    run([sys.executable, 'tools/test.py', args.config,
         last_checkpoint(args.work_dir), '--work-dir', args.work_dir,
         '--show-dir', 'predictions', '--metrics-json', metrics_file], env)
    test_s = time.perf_counter() - t0

    with open(metrics_file) as f:
        metrics = json.load(f)
    runs = sorted(d for d in os.listdir(args.work_dir)
                  if osp.isdir(osp.join(args.work_dir, d, 'predictions')))
    pictures = osp.join(args.work_dir, runs[-1], 'predictions') if runs \
        else None
    sheet = osp.join(args.work_dir, 'contact_sheet.jpg')
    score_thr = cfg.default_hooks.visualization.score_thr
    if pictures:
        make_contact_sheet(pictures, sheet, num=12, columns=3,
                           tile_scale=0.5,
                           caption=f'held-out images: ground truth | '
                           f'prediction (score > {score_thr})')
    print('\n==== demo: Mask R-CNN, reduced L2ViT, synthetic shapes ====')
    print(f'box AP {metrics["coco/bbox_mAP"]:.3f}   '
          f'box AP50 {metrics["coco/bbox_mAP_50"]:.3f}   '
          f'mask AP {metrics["coco/segm_mAP"]:.3f}   '
          f'mask AP50 {metrics["coco/segm_mAP_50"]:.3f}')
    print(f'pretrain {pretrain_s / 60:.1f} min, fine-tune '
          f'{train_s / 60:.1f} min, test {test_s:.0f} s, total '
          f'{(time.perf_counter() - start) / 60:.1f} min')
    print(f'predictions painted in {pictures}/ (boxes scoring above '
          f'{score_thr}, 3x upscaled), contact sheet: {sheet}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
