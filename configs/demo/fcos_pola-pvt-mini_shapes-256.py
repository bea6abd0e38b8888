# The `make demo` detector: FCOS with a 4-stage Pola-PVT of ~2M parameters, trained from
# random init on CPU on the generated shapes dataset (256-px images, 4 classes).
# tools/demo/shapes_detection.py generates the data and fills in the data loaders.
_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', '../_base_/pola_runtime.py']

image_size = 256
model = dict(
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='pola_mm.PolaPVT',
        arch=dict(
            embed_dims=[32, 64, 128, 192],
            depths=[1, 2, 2, 1],
            num_heads=[1, 2, 4, 6],
            mlp_ratios=[4, 4, 4, 4]),
        pretrain_img_size=image_size,
        drop_path_rate=0.0,
        out_indices=(1, 2, 3),
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 192], out_channels=64, start_level=0, num_outs=5),
    bbox_head=dict(num_classes=4, in_channels=64, feat_channels=64, stacked_convs=2),
    test_cfg=dict(score_thr=0.05, max_per_img=20))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5),
]
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=10.0))
default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
