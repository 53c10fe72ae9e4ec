# Mask R-CNN 1x (12 epochs) with InLine-PVT-L on COCO 2017:
# maskrcnn_inline_pvt_t_coco.py (same recipe) with the large arch and its
# ImageNet checkpoint.
_base_ = './maskrcnn_inline_pvt_t_coco.py'

model = dict(
    backbone=dict(
        arch='large',
        init_cfg=dict(checkpoint='checkpoints/inline_pvt_l.pth')))
