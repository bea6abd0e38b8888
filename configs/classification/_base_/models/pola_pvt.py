# Pola-PVT ImageNet classifier: backbone -> global average pooling -> linear head.
# The backbone returns the raw last-stage map (no norm), so pooling it reproduces the
# official classifier, which averages the last tokens without its final `norm`.
_base_ = ['../../../_base_/pola_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='pola_mm.PolaPVT',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)))
