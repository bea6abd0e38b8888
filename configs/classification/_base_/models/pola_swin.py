# Pola-Swin ImageNet classifier: backbone -> global average pooling -> linear head.
# The backbone's output LayerNorm of stage 4 holds the official final `norm`, so
# pooling its output reproduces the official classifier (norm, then average).
# pola_mm.models.classifiers registers the evaluation configs' checkpoint hook.
custom_imports = dict(
    imports=['pola_mm', 'pola_mm.models.classifiers'], allow_failed_imports=False)

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
