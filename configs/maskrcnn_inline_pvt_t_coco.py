# Mask R-CNN 1x (12 epochs) with InLine-PVT-T on COCO 2017. The InLine
# repository publishes no detection recipe; this is the lab's PVT-family proxy
# (Agent Attention): AdamW lr 2e-4 wd 1e-4, single-scale 1333x800, 16 images
# per step, drop_path 0.1. Starts from the official ImageNet checkpoint.
# maskrcnn_inline_pvt_s_coco.py, maskrcnn_inline_pvt_m_coco.py and
# maskrcnn_inline_pvt_l_coco.py inherit this file.
_base_ = [
    './_base_/models/maskrcnn_fpn_inline_pvt.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/det_adamw_pvt_1x.py',
    './_base_/runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/inline_pvt_t.pth')))
