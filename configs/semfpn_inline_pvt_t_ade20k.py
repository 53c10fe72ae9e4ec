# Semantic FPN 40k with InLine-PVT-T on ADE20K, 512x512 crops. The InLine
# repository publishes no segmentation recipe; this is the lab's PVT-family
# proxy (Agent Attention): AdamW lr 2e-4 wd 1e-4, poly 0.9, 16 images per step,
# drop_path 0.1. Starts from the official ImageNet checkpoint.
# semfpn_inline_pvt_s_ade20k.py, semfpn_inline_pvt_m_ade20k.py and
# semfpn_inline_pvt_l_ade20k.py inherit this file.
_base_ = [
    './_base_/models/semfpn_inline_pvt.py',
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
            checkpoint='checkpoints/inline_pvt_t.pth')))
