# UperNet 160k with InLine-Swin-T on ADE20K, 512x512 crops, the Swin-family
# recipe: AdamW lr 6e-5 wd 0.01 (none on norms and relative position tables),
# poly (power 1.0) after a 1500-iteration warm-up, 16 images per step,
# drop_path 0.3, FCN auxiliary head on stage 2 (loss weight 0.4). Starts from
# the official ImageNet checkpoint. upernet_inline_swin_s_ade20k.py and
# upernet_inline_swin_b_ade20k.py inherit this file.
_base_ = [
    './_base_/models/upernet_inline_swin.py',
    './_base_/datasets/ade20k_512.py',
    './_base_/schedules/seg_adamw_160k_swin.py',
    './_base_/runtime_seg.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/inline_swin_t.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
