# The from-scratch twin of maskrcnn_inline_swin_demo.py (same model, data and
# schedule; backbone initialised from scratch).
_base_ = './maskrcnn_inline_swin_demo.py'

model = dict(backbone=dict(init_cfg=None))
