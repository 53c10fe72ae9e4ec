# Mask R-CNN 3x (36 epochs) with InLine-Swin-B on COCO 2017:
# maskrcnn_inline_swin_t_3x_coco.py (same recipe) with the base arch, its
# ImageNet checkpoint, drop_path 0.3 and the neck's input widths.
_base_ = './maskrcnn_inline_swin_t_3x_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/inline_swin_b.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
