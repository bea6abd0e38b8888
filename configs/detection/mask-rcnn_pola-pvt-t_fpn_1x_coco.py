# Mask R-CNN 1x with Pola-PVT-T, ImageNet-1K pretrained.
# Paper (Table 2): box AP 40.4 (AP50 62.4, AP75 43.9), mask AP 37.4 (AP50 59.4, AP75 40.3).
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/pola_backbones.py',
    './_base_/pola_adamw.py',
]
model = dict(
    backbone={{_base_.pola_pvt_tiny}},
    neck=dict(in_channels={{_base_.pola_pvt_channels}}))
optim_wrapper = {{_base_.pola_optim_wrapper}}
