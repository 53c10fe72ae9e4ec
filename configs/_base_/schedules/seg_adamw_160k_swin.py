# UperNet ADE20K recipe for Swin-family backbones: as seg_adamw_160k.py, with
# no weight decay on norms and relative position tables (mmseg's Swin
# UperNet configs).
_base_ = './seg_adamw_160k.py'

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
