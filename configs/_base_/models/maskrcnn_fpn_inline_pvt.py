# Mask R-CNN + FPN on an InLine-PVT backbone (raw stage outputs, no output
# norms: the lab's Agent-PVT convention).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLinePVT',
        arch='tiny',
        pretrain_img_size=224,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    neck=dict(in_channels=[64, 128, 320, 512]))
