# Mask R-CNN + FPN (mmdet's standard heads) on an L2ViT backbone.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='L2ViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    neck=dict(in_channels=[96, 192, 384, 768]))
