# Fine-tuning a released PolaFormer backbone on your own ImageFolder-style dataset:
#   data/custom/train/<class name>/<image>   and   data/custom/val/<class name>/<image>
# (labels follow the sorted class folder names). The per-model config sets the backbone's
# `init_cfg` to the released file (its ImageNet head is dropped) and a new head with
# `num_classes`; change both `model.head.num_classes` and `data_preprocessor.num_classes`
# to your class count, e.g.
#   --cfg-options model.head.num_classes=37 data_preprocessor.num_classes=37
_base_ = ['mmpretrain::_base_/default_runtime.py', '../../_base_/pola_no_weight_decay.py']

data_root = 'data/custom'
image_size = 224

data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=image_size, backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=int(image_size / 0.875), edge='short',
         backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

# AdamW, lr 1e-4 at a total batch of 256 (8 GPUs x 32), cosine over 30 epochs after a
# one-epoch warm-up. No weight decay on biases and on the parameters of
# ../../_base_/pola_no_weight_decay.py (norms, positional tables, the Pola attention's
# scale and power).
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={{_base_.pola_no_decay_keys}}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1),
]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=256)

default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2,
                                     save_best='auto'))
