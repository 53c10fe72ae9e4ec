# Mask R-CNN 1x (12 epochs) with L2ViT-T on COCO 2017, the official L2ViT
# recipe: AdamW lr 1e-4 wd 0.05, multi-scale crop training, 16 images per step,
# drop_path 0.1. Starts from the official ImageNet checkpoint.
# maskrcnn_l2vit_s_coco.py and maskrcnn_l2vit_b_coco.py inherit this file.
_base_ = [
    './_base_/models/maskrcnn_fpn_l2vit.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/det_adamw_l2vit_1x.py',
    './_base_/runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
