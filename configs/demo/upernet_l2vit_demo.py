# Demo: UperNet with a *reduced* L2ViT backbone on the synthetic shapes data
# in the ADE20K layout (data, schedule, runtime: _base_/seg_shapes.py),
# fine-tuned from the demo classifier that
# `python tools/pretrain_demo.py --model l2vit_demo` writes (official L2ViT
# layout), as the ADE20K configs start from the official ImageNet files. Its
# from-scratch twin: upernet_l2vit_demo_scratch.py. Sized for a few CPU
# minutes: backbone widths 32-64-128-256 (one local-window and one
# linear-global block per stage), UPerHead and auxiliary FCN head 64/32 wide.
_base_ = ['../_base_/models/upernet_l2vit.py', './_base_/seg_shapes.py']

num_classes = 6
dims = [32, 64, 128, 256]

model = dict(
    data_preprocessor=dict(size=None, size_divisor=32,
                           test_cfg=dict(size_divisor=32)),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=dims, depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8]),
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained',
                      checkpoint='work_dirs/demo_pretrain/l2vit_demo_cls.pth')),
    # Shapes cover ~14% of the pixels: cross-entropy with the background
    # weighted 0.25 against 1 for each shape class. (mmseg 1.2.2's
    # CrossEntropyLoss raises IndexError for class_weight with ignored
    # pixels under reduction='mean', mmseg issue #3734; 'sum' is safe: the
    # loss weights 1e-4 / 4e-5 keep the usual 1 : 0.4 of the two heads.)
    decode_head=dict(
        in_channels=dims, channels=64, num_classes=num_classes,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                         class_weight={{_base_.class_weight}},
                         reduction='sum', loss_weight=1e-4)),
    auxiliary_head=dict(
        in_channels=dims[2], channels=32, num_classes=num_classes,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                         class_weight={{_base_.class_weight}},
                         reduction='sum', loss_weight=4e-5)))
