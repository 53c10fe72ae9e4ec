# RetinaNet 3x (36 epochs) with L2ViT-T on COCO 2017, the official L2ViT
# recipe: AdamW lr 1e-4 wd 0.05, multi-scale crop training, 16 images per step,
# drop_path 0.2, stages 1-3 into the FPN (start_level=0, extra convs on input).
# Starts from the official ImageNet checkpoint. retinanet_l2vit_s_3x_coco.py
# and retinanet_l2vit_b_3x_coco.py inherit this file.
_base_ = [
    './_base_/models/retinanet_fpn_l2vit.py',
    './_base_/datasets/coco_detection_ms_crop.py',
    './_base_/schedules/det_adamw_l2vit_3x.py',
    './_base_/runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth')),
    neck=dict(in_channels=[192, 384, 768]))
