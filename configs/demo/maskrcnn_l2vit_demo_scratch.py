# The from-scratch twin of maskrcnn_l2vit_demo.py: the same model, data and
# schedule, with the backbone initialised from scratch instead of from the
# demo classifier, so the effect of pretraining is a measured number.
_base_ = './maskrcnn_l2vit_demo.py'

model = dict(backbone=dict(init_cfg=None))
