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
# lr 5e-4 (as the InLine-Swin Mask R-CNN demo): mIoU 33.5 against 30.7 at
# the L2ViT demo's 1.5e-3.
optim_wrapper = dict(optimizer=dict(lr=5e-4))
