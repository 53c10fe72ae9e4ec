# Mask R-CNN 3x (36 epochs) with InLine-Swin-S on COCO 2017:
# maskrcnn_inline_swin_t_3x_coco.py (same recipe) with the small arch, its
# ImageNet checkpoint and drop_path 0.3.
_base_ = './maskrcnn_inline_swin_t_3x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/inline_swin_s.pth')))
