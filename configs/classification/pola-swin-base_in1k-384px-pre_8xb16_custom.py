# Pola-Swin-B-384: fine-tuning the released ImageNet backbone on your own ImageFolder-style
# dataset (see _base_/custom_finetune.py for the folder layout and the class count).
# ImageNet-1k top-1 at 384 not listed in the paper or the official README.
#   python tools/train.py configs/classification/pola-swin-base_in1k-384px-pre_8xb16_custom.py
_base_ = ['./_base_/models/pola_swin.py', './_base_/custom_finetune.py']

model = dict(
    backbone=dict(
        arch='base',
        pretrain_img_size=384,
        window_size=12,
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pola_swin_base_384.pth')),
    head=dict(num_classes=1000, in_channels=1024))  # num_classes: your class count

# The 384 model fine-tunes at 384x384 with its own test-time resize (no crop).
image_size = 384
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=image_size, backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
# 16 images per GPU at 384x384 (8 x 16 = 128 in all): the base's lr of 1e-4 at 256 scaled
# linearly to 5e-5, and --auto-scale-lr scales from this batch.
train_dataloader = dict(batch_size=16, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=16, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=5e-5))
auto_scale_lr = dict(base_batch_size=128)
