# UperNet ADE20K recipe (L2ViT, Swin): 160k iterations, AdamW lr 6e-5, betas
# (0.9, 0.999), weight decay 0.01, linear warm-up over 1500 iterations from
# 1e-6x, then poly decay with power 1.0 to 0. 16 images per step (8 x 2).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999),
                   weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000,
         by_epoch=False)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
