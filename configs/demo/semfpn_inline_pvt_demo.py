# Demo: Semantic FPN with a *reduced* InLine-PVT backbone (widths
# 32-64-128-256, two global InLine blocks per stage) on the synthetic shapes
# data in the ADE20K layout (data, schedule, runtime: _base_/seg_shapes.py),
# fine-tuned from the demo classifier that
# `python tools/pretrain_demo.py --model inline_pvt_demo` writes (official
# InLine layout). The position embeddings are stored for the 32 px
# pretraining crops and interpolated to each image's grid. Its from-scratch
# twin: semfpn_inline_pvt_demo_scratch.py.
_base_ = ['../_base_/models/semfpn_inline_pvt.py', './_base_/seg_shapes.py']

num_classes = 6
dims = [32, 64, 128, 256]

model = dict(
    data_preprocessor=dict(size=None, size_divisor=32,
                           test_cfg=dict(size_divisor=32)),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=dims, depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8], mlp_ratios=[8, 8, 4, 4]),
        pretrain_img_size=32,
        drop_path_rate=0.0,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/demo_pretrain/inline_pvt_demo_cls.pth')),
    neck=dict(in_channels=dims, out_channels=64),
    # Class-weighted cross-entropy, as the UperNet demo (reduction 'sum':
    # see upernet_l2vit_demo.py).
    decode_head=dict(
        in_channels=[64, 64, 64, 64], channels=64, num_classes=num_classes,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                         class_weight={{_base_.class_weight}},
                         reduction='sum', loss_weight=1e-4)))
