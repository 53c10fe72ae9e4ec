# Semantic FPN 40k with InLine-PVT-S on ADE20K: semfpn_inline_pvt_t_ade20k.py
# (same recipe) with the small arch and its ImageNet checkpoint.
_base_ = './semfpn_inline_pvt_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/inline_pvt_s.pth')))
