# UperNet 160k with InLine-Swin-B on ADE20K: upernet_inline_swin_t_ade20k.py
# (same recipe) with the base arch, its ImageNet checkpoint and the heads'
# input widths.
_base_ = './upernet_inline_swin_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(checkpoint='checkpoints/inline_swin_b.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
