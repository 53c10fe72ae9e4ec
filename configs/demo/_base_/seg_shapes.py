# The segmentation demos' data, schedule and runtime: the synthetic shapes
# data in the ADE20K layout (python tools/generate_demo_data.py writes
# data/demo/ade/ADEChallengeData2016). Label maps follow ADE20K: 0 = "other"
# (thin clutter strokes, ignored), 1 = background, 2-6 = shapes;
# reduce_zero_label gives 6 classes. The model configs beside it
# (upernet_*_demo.py, semfpn_*_demo.py) add the segmentor.
_base_ = ['../../_base_/runtime_seg.py']

# The package, its datasets module and its readable-scale visualizers.
custom_imports = dict(
    imports=['mmdet_l2vit', 'mmdet_l2vit.datasets',
             'mmdet_l2vit.visualization'],
    allow_failed_imports=False)

data_root = 'data/demo/ade/ADEChallengeData2016'
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'star', 'cross'),
    palette=[(120, 120, 120), (220, 20, 60), (0, 130, 200), (60, 180, 75),
             (255, 165, 0), (145, 30, 180)])
num_classes = 6
# Cross-entropy class weights of the model configs: background 0.25, each
# shape class 1 (the shapes cover ~14% of the pixels; 0.1 over-predicts
# the shapes around their borders: UperNet L2ViT, 1200 iterations from a
# 92.4% classifier, mIoU 58.5 at 0.1 against 62.9 at 0.25).
class_weight = [0.25] + [1.0] * (num_classes - 1)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs')
]
demo_dataset = dict(type='BaseSegDataset', data_root=data_root,
                    metainfo=metainfo, img_suffix='.jpg',
                    seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        demo_dataset,
        data_prefix=dict(img_path='images/training',
                         seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        demo_dataset,
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 2000
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
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=400,
                    max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Paint every test image (the default interval paints one in 50).
    visualization=dict(type='SegVisualizationHook', interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
# Paint at 3x (image and label maps upscaled; the class labels' font grows
# with the image) beside the ground truth: GT | prediction, 2 x 3 x W wide.
visualizer = dict(type='UpscaledSegLocalVisualizer', scale=3)
