# ImageNet-1k evaluation of a released PolaFormer++ classifier at 224x224.
# The authors' test-time preprocessing: resize the whole image to 256x256 (square, not the
# shorter side; bicubic, PIL), centre crop 224, ImageNet mean/std. Everything else
# (`load_from` of the released file as it is, the training settings) is imagenet_eval_224.py's.
_base_ = ['./imagenet_eval_224.py']

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
