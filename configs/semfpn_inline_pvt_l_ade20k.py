# Semantic FPN 40k with InLine-PVT-L on ADE20K: semfpn_inline_pvt_t_ade20k.py
# (same recipe) with the large arch and its ImageNet checkpoint.
_base_ = './semfpn_inline_pvt_t_ade20k.py'

model = dict(
    backbone=dict(
        arch='large',
        init_cfg=dict(checkpoint='checkpoints/inline_pvt_l.pth')))
