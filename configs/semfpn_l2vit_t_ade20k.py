# Semantic FPN 40k with L2ViT-T on ADE20K, 512x512 crops, with the PVT-family
# protocol used for InLine-PVT (AdamW lr 2e-4 wd 1e-4, poly 0.9, 16 images per
# step, drop_path 0.1): for comparing the two backbone families. Starts from
# the official ImageNet checkpoint.
_base_ = [
    './_base_/models/semfpn_l2vit.py',
    './_base_/datasets/ade20k_512.py',
    './_base_/schedules/seg_adamw_40k.py',
    './_base_/runtime_seg.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth')))
