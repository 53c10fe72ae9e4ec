# maskrcnn_l2vit_t_coco.py with layer-wise learning-rate decay over the
# backbone (not part of the official recipe, which has none): the stem
# trains at 0.95**6 of the base lr, each later layer id one factor 0.95
# closer to it, the neck and heads at the base lr (ConvNeXt's Mask R-CNN
# rate). L2ViT-T has 7 layer ids: the stem, stage 0, stage 1, stage 2 in
# two groups of three blocks, stage 3, the neck and heads. No weight decay
# on 1-D parameters (norms, biases), the official layer-decay rule.
_base_ = './maskrcnn_l2vit_t_coco.py'

optim_wrapper = dict(
    constructor='BackboneLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise',
                       flat_decay_mult=0.))
