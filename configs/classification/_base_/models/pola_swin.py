# Pola-Swin ImageNet classifier: backbone -> global average pooling -> linear head.
# The backbone's output LayerNorm of stage 4 holds the official final `norm`, so
# pooling its output reproduces the official classifier (norm, then average).
_base_ = ['../../../_base_/pola_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='pola_mm.PolaSwinTransformer',
        arch='tiny',
        pretrain_img_size=224,
        window_size=7,
        drop_path_rate=0.2,
        out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)))
