# Pola backbones with their ImageNet-1K checkpoints (README: which released file goes
# where) and the neck input channels they need, shared by the detection and segmentation
# configs. Bases may not share keys, so a config takes them by name:
# `model = dict(backbone={{_base_.pola_pvt_tiny}}, neck=dict(in_channels={{_base_.pola_pvt_channels}}))`.
_base_ = ['./pola_runtime.py']

pola_pvt_tiny = dict(
    _delete_=True,
    type='pola_mm.PolaPVT',
    arch='tiny',
    drop_path_rate=0.1,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pola_pvt_tiny.pth'))
pola_pvt_small = dict(
    pola_pvt_tiny,
    arch='small',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pola_pvt_small.pth'))
pola_pvt_channels = [64, 128, 320, 512]

pola_swin_tiny = dict(
    _delete_=True,
    type='pola_mm.PolaSwinTransformer',
    arch='tiny',
    drop_path_rate=0.2,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pola_swin_tiny.pth'))
pola_swin_tiny_channels = [96, 192, 384, 768]
