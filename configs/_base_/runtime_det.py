# mmdet runtime + the package (backbones, hooks, data checks).
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(
    imports=['mmdet_l2vit', 'mmdet_l2vit.datasets'],
    allow_failed_imports=False)
# RNGStateHook: --resume continues the random streams of the stopped run.
custom_hooks = [dict(type='RNGStateHook')]
