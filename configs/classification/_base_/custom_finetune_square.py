# custom_finetune.py with the PolaFormer++ authors' test-time preprocessing: resize the
# whole image to 256x256 (square, bicubic, PIL), centre crop 224.
_base_ = ['./custom_finetune.py']

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
