# Mask R-CNN 3x with PolaFormer++ b2 (PolaPP-b2), ImageNet-1K pretrained, as in the
# authors' maskrcnn_b2_3x.py: Swin's multi-scale + crop training (mmdet's
# swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py, the 3.x form of the authors'
# AutoAugment), 36 epochs with lr steps at 27 and 33, batch 16 (8 GPUs x 2), AdamW
# lr 1e-4 / weight decay 0.05, fp16 with a static loss scale of 512 (AmpOptimWrapper:
# needs a GPU), and the authors' 500 warm-up iterations (Swin's recipe has 1000).
# The authors publish no COCO numbers. BN statistics: see ../_base_/polapp_backbones.py.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/coco_instance_ms-crop-3x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/polapp_backbones.py',
    './_base_/polapp_adamw_amp.py',
]
model = dict(
    backbone={{_base_.polapp_b2}},
    neck=dict(in_channels={{_base_.polapp_b2_channels}}))
optim_wrapper = {{_base_.polapp_mask_rcnn_optim_wrapper}}
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1),
]
