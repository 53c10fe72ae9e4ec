# RetinaNet 1x (12 epochs) with L2ViT-S on COCO 2017:
# retinanet_l2vit_t_coco.py (same recipe) with the small arch and its ImageNet
# checkpoint.
_base_ = './retinanet_l2vit_t_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(
            checkpoint='checkpoints/L2ViT-Small-checkpoint-best-ema.pth')))
