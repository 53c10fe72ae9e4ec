# PVT-family Mask R-CNN recipe, 1x (the InLine lab's Agent-PVT proxy; the
# InLine repository publishes none): AdamW lr 2e-4, weight decay 1e-4,
# 12 epochs with steps at 8 and 11, linear warm-up over 500 iterations.
# 16 images per step (8 GPUs x 2).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999),
                   weight_decay=1e-4))
auto_scale_lr = dict(enable=False, base_batch_size=16)
