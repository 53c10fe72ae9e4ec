# Mask R-CNN 1x (12 epochs) with L2ViT-B on COCO 2017:
# maskrcnn_l2vit_t_coco.py (same recipe) with the base arch, its ImageNet
# checkpoint, drop_path 0.2 and the neck's input widths.
_base_ = './maskrcnn_l2vit_t_coco.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.2,
        init_cfg=dict(
            checkpoint='checkpoints/L2ViT-Base-checkpoint-best-ema.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
