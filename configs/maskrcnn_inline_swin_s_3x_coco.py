# Mask R-CNN 3x (36 epochs) with InLine-Swin-S on COCO 2017. The InLine
# repository publishes no detection recipe; this is the Swin-family proxy
# (Agent Attention / Swin): AdamW lr 1e-4 wd 0.05 (none on norms and relative
# position tables), multi-scale crop training, 16 images per step,
# drop_path 0.3. Starts from the official ImageNet checkpoint.
_base_ = [
    './_base_/models/maskrcnn_fpn_inline_swin.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/det_adamw_swin_3x.py',
    './_base_/runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/inline_swin_s.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
