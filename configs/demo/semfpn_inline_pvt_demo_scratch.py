# The from-scratch twin of semfpn_inline_pvt_demo.py (same model, data and
# schedule; backbone initialised from scratch).
_base_ = './semfpn_inline_pvt_demo.py'

model = dict(backbone=dict(init_cfg=None))
