# Demo: Mask R-CNN with a *reduced* L2ViT backbone on the synthetic shapes
# data (python tools/generate_demo_data.py writes it to data/demo/coco in the
# COCO layout), fine-tuned from the demo classifier exactly as the COCO
# configs start from the official ImageNet checkpoints: init_cfg Pretrained
# on an official-layout classification file, here the one
# `python tools/pretrain_demo.py --model l2vit_demo` writes (make demo runs
# it when the file is missing). Its from-scratch twin:
# maskrcnn_l2vit_demo_scratch.py. Sized to train on 2 CPU cores in a few
# minutes: backbone widths 32-64-128-256 with one local-window and one
# linear-global block per stage (L2ViT-T: 96-192-384-768, 2-2-6-2), a 64-wide
# FPN and lighter heads, native image size (128-192 px), anchors from 16 px.
_base_ = ['../_base_/models/maskrcnn_fpn_l2vit.py', '../_base_/runtime_det.py']

# The package, its datasets module and its readable-scale visualizers.
custom_imports = dict(
    imports=['mmdet_l2vit', 'mmdet_l2vit.datasets',
             'mmdet_l2vit.visualization'],
    allow_failed_imports=False)

data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'cross'),
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 165, 0),
             (145, 30, 180)])
num_classes = 5
dims = [32, 64, 128, 256]

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=dims, depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8]),
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained',
                      checkpoint='work_dirs/demo_pretrain/l2vit_demo_cls.pth')),
    neck=dict(in_channels=dims, out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            out_channels=64,
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=1)),
        bbox_head=dict(in_channels=64, fc_out_channels=256,
                       num_classes=num_classes),
        mask_roi_extractor=dict(
            out_channels=64,
            roi_layer=dict(type='RoIAlign', output_size=14,
                           sampling_ratio=1)),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64,
                       num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_iters = 700
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.999), fused=True,
                   weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', T_max=max_iters - 100, eta_min=1e-5,
         by_epoch=False, begin=100, end=max_iters)
]
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=400,
                    max_keep_ckpts=2),
    # Painted test pictures (tools/test.py --show-dir) show boxes scoring
    # above 0.5. The box head scores each RoI by a softmax over the classes
    # and the background, so at most one class per RoI passes 0.5: the
    # 30-50 % wrong-class boxes the default 0.3 paints on each object drop out.
    visualization=dict(type='DetVisualizationHook', score_thr=0.5))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
randomness = dict(seed=0)
# Paint at 3x (image, boxes and masks upscaled, labels at their usual pixel
# size) so the labels stay readable on the 128-192 px images; GT | prediction.
visualizer = dict(type='UpscaledDetLocalVisualizer', scale=3)
