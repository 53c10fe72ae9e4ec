# UperNet 160k with L2ViT-T on ADE20K, 512x512 crops, the official L2ViT
# recipe: AdamW lr 6e-5 wd 0.01, poly (power 1.0) after a 1500-iteration
# warm-up, 16 images per step, drop_path 0.3, FCN auxiliary head on stage 2
# (loss weight 0.4). Starts from the official ImageNet checkpoint.
# upernet_l2vit_s_ade20k.py and upernet_l2vit_b_ade20k.py inherit this file.
_base_ = [
    './_base_/models/upernet_l2vit.py',
    './_base_/datasets/ade20k_512.py',
    './_base_/schedules/seg_adamw_160k.py',
    './_base_/runtime_seg.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/L2ViT-Tiny-checkpoint-best-ema.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
