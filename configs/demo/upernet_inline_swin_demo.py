# Demo: UperNet with a *reduced* InLine-Swin backbone (widths 32-64-128-256,
# global InLine blocks in stages 1-3, window softmax in stage 4, as
# InLine-Swin-T's 'IIIS') on the synthetic shapes data, fine-tuned from the
# demo classifier `python tools/pretrain_demo.py --model inline_swin_demo`
# writes (official InLine layout). Heads, data and schedule:
# upernet_l2vit_demo.py. Its from-scratch twin:
# upernet_inline_swin_demo_scratch.py.
_base_ = './upernet_l2vit_demo.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='InLineSwin',
        arch=dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                  attn_types='IIIS'),
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/demo_pretrain/inline_swin_demo_cls.pth')))
# The heads at the L2ViT demo's lr 1.5e-3, the pretrained backbone at 0.2x
# (3e-4): mIoU 37.7 from an 86.8 % classifier, against 33.5 with every
# parameter at 5e-4 and 30.7 at 1.5e-3 (from an 86.2 % classifier).
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.2)}))
