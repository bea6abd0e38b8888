# PolaFormer++ ImageNet classifier: backbone -> PolaPPClassifierNeck (the authors' 1x1 conv
# `proj`, BatchNorm `norm` and SiLU, then global average pooling) -> linear head (the
# authors' 1x1 conv `head`, its kernel squeezed when a released file is converted).
# The backbone returns the raw last-stage map (out_norms=False): the authors' classifier
# projects it without a norm.
_base_ = ['../../../_base_/pola_runtime.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='pola_mm.PolaPP',
        arch='b0',
        drop_path_rate=0.1,
        out_indices=(3, ),
        out_norms=False),
    neck=dict(type='pola_mm.PolaPPClassifierNeck', in_channels=384, out_channels=2048),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=2048,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)))
