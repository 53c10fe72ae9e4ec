# Mask R-CNN + FPN on an InLine-Swin backbone (InLine blocks global over the
# map, softmax blocks as Swin windows of 7, output norms norm0-3).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineSwin',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    neck=dict(in_channels=[96, 192, 384, 768]))
