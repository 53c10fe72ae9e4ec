# Semantic FPN (FPN neck + FPNHead) on an L2ViT backbone, ADE20K classes.
_base_ = 'mmseg::_base_/models/fpn_r50.py'

model = dict(
    data_preprocessor=dict(size=(512, 512)),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='L2ViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    neck=dict(in_channels=[96, 192, 384, 768], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150))
