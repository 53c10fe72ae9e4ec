# RetinaNet + FPN on an L2ViT backbone. Only stages 1-3 feed the FPN
# (start_level=0, extra levels from the input): an unused stage-0 output norm
# would make DDP fail on unused parameters.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='L2ViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(1, 2, 3),
        with_cp=False),
    neck=dict(
        in_channels=[192, 384, 768],
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5))
