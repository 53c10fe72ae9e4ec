# upernet_l2vit_t_ade20k.py with stage-wise learning-rate decay over the
# backbone (not part of the official recipe, which has none): the stem at
# 0.9**5 of the base lr, stage i at 0.9**(4 - i), the decode and auxiliary
# heads at the base lr (ConvNeXt's UperNet rate and type). No weight decay
# on 1-D parameters (norms, biases), the official layer-decay rule.
_base_ = './upernet_l2vit_t_ade20k.py'

optim_wrapper = dict(
    constructor='BackboneLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise',
                       flat_decay_mult=0.))
