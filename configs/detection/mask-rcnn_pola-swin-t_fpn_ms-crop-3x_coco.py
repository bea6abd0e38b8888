# Mask R-CNN 3x (multi-scale + crop training, as Swin's) with Pola-Swin-T, ImageNet-1K
# pretrained. Paper (Table 2): box AP 47.0 (AP50 68.9, AP75 51.5),
# mask AP 42.3 (AP50 66.0, AP75 45.8).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/coco_instance_ms-crop-3x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/pola_backbones.py',
    './_base_/pola_adamw.py',
]
model = dict(
    backbone={{_base_.pola_swin_tiny}},
    neck=dict(in_channels={{_base_.pola_swin_tiny_channels}}))
optim_wrapper = {{_base_.pola_optim_wrapper}}
