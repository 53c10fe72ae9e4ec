# The from-scratch twin of upernet_l2vit_demo.py: the same model, data and
# schedule, with the backbone initialised from scratch instead of from the
# demo classifier, so the effect of pretraining is a measured number.
_base_ = './upernet_l2vit_demo.py'

model = dict(backbone=dict(init_cfg=None))
