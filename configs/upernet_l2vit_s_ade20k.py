# UperNet 160k with L2ViT-S on ADE20K: upernet_l2vit_t_ade20k.py (same recipe)
# with the small arch and its ImageNet checkpoint.
_base_ = './upernet_l2vit_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(
            checkpoint='checkpoints/L2ViT-Small-checkpoint-best-ema.pth')))
