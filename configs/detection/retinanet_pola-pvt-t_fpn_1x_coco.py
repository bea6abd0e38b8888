# RetinaNet 1x with Pola-PVT-T, ImageNet-1K pretrained.
# Paper (Table 2): box AP 39.5 (AP50 60.1, AP75 42.1).
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/pola_backbones.py',
    './_base_/pola_adamw.py',
]
model = dict(
    backbone={{_base_.pola_pvt_tiny}},
    neck=dict(in_channels={{_base_.pola_pvt_channels}}))
optim_wrapper = {{_base_.pola_optim_wrapper}}
