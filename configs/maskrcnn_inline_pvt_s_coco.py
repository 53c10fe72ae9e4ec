# Mask R-CNN 1x (12 epochs) with InLine-PVT-S on COCO 2017:
# maskrcnn_inline_pvt_t_coco.py (same recipe) with the small arch and its
# ImageNet checkpoint.
_base_ = './maskrcnn_inline_pvt_t_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/inline_pvt_s.pth')))
