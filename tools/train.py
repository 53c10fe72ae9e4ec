"""Train a detector (mmdet config) or segmentor (mmseg config).

Usage: python tools/train.py CONFIG [--work-dir DIR] [--amp]
       [--resume [CKPT]] [--auto-scale-lr] [--cfg-options k=v ...]
       [--launcher {none,pytorch,slurm,mpi}]

The arguments of mmdet's and mmseg's tools/train.py. Datasets and
checkpoint paths are checked before anything is built; without a GPU,
distributed runs use gloo.
"""
import sys

from mmdet_l2vit.engine.cli import train

if __name__ == '__main__':
    sys.exit(train())
