# UperNet 160k with L2ViT-B on ADE20K, 512x512 crops, the official L2ViT
# recipe: AdamW lr 6e-5 wd 0.01, poly (power 1.0) after a 1500-iteration
# warm-up, 16 images per step, drop_path 0.3, FCN auxiliary head on stage 2
# (loss weight 0.4). Starts from the official ImageNet checkpoint.
_base_ = [
    './_base_/models/upernet_l2vit.py',
    './_base_/datasets/ade20k_512.py',
    './_base_/schedules/seg_adamw_160k.py',
    './_base_/runtime_seg.py',
]

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/L2ViT-Base-checkpoint-best-ema.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
