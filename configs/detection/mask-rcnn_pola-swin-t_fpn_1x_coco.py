# Mask R-CNN 1x with Pola-Swin-T, ImageNet-1K pretrained.
# Paper (Table 2): box AP 44.8 (AP50 67.6, AP75 49.1), mask AP 40.5 (AP50 64.1, AP75 43.5).
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/pola_backbones.py',
    './_base_/pola_adamw.py',
]
model = dict(
    backbone={{_base_.pola_swin_tiny}},
    neck=dict(in_channels={{_base_.pola_swin_tiny_channels}}))
optim_wrapper = {{_base_.pola_optim_wrapper}}
