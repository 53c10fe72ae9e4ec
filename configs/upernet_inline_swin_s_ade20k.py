# UperNet 160k with InLine-Swin-S on ADE20K: upernet_inline_swin_t_ade20k.py
# (same recipe) with the small arch and its ImageNet checkpoint.
_base_ = './upernet_inline_swin_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/inline_swin_s.pth')))
