"""Test a detector (mmdet config) or segmentor (mmseg config); print box AP /
mask AP (COCO metric) or mIoU.

Usage: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
       [--out FILE_OR_DIR] [--show] [--show-dir DIR] [--metrics-json FILE]
       [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

--out: a .pkl of the predictions (mmdet) or a folder of label maps (mmseg).
--show-dir: painted predictions; a relative DIR is placed in the work dir
(mmdet: work_dir/<timestamp>/DIR; mmseg: work_dir/DIR/vis_data/vis_image).
"""
import sys

from mmdet_l2vit.engine.cli import test

if __name__ == '__main__':
    sys.exit(test())
