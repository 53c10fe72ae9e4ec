# UperNet (UPerHead + FCN auxiliary head on stage index 2) on an InLine-Swin
# backbone, ADE20K's 150 classes.
_base_ = 'mmseg::_base_/models/upernet_swin.py'

model = dict(
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        _delete_=True,
        type='InLineSwin',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        with_cp=False),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, in_index=2, loss_decode=dict(
        loss_weight=0.4), num_classes=150))
