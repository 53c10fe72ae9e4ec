# Semantic FPN ADE20K recipe of the PVT family (InLine lab's proxy recipe):
# 40k iterations, AdamW lr 2e-4, weight decay 1e-4, poly decay power 0.9 to 0.
# 16 images per step (8 x 2).
_base_ = 'mmseg::_base_/schedules/schedule_40k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999),
                   weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000,
         by_epoch=False)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
