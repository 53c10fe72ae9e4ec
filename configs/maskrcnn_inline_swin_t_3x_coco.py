# Mask R-CNN 3x (36 epochs) with InLine-Swin-T on COCO 2017. The InLine
# repository publishes no detection recipe; this is the Swin-family proxy
# (Agent Attention / Swin): AdamW lr 1e-4 wd 0.05 (none on norms and relative
# position tables), multi-scale crop training, 16 images per step, drop_path
# 0.2. Starts from the official ImageNet checkpoint.
# maskrcnn_inline_swin_s_3x_coco.py and maskrcnn_inline_swin_b_3x_coco.py
# inherit this file.
_base_ = [
    './_base_/models/maskrcnn_fpn_inline_swin.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/det_adamw_swin_3x.py',
    './_base_/runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/inline_swin_t.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
