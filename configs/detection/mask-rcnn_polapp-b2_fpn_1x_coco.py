# Mask R-CNN 1x with PolaFormer++ b2 (PolaPP-b2), ImageNet-1K pretrained, as in the
# authors' downstream/detection maskrcnn_b2_1x.py: 12 epochs, batch 16 (8 GPUs x 2),
# AdamW lr 1e-4 / weight decay 0.05, 500 warm-up iterations, fp16 with a static loss
# scale of 512 (AmpOptimWrapper: needs a GPU). The authors publish no COCO numbers.
# The backbone's BN statistics stay frozen (norm_eval=True); the authors' detection
# runs train them: ../_base_/polapp_backbones.py says why and how to do that instead.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/polapp_backbones.py',
    './_base_/polapp_adamw_amp.py',
]
model = dict(
    backbone={{_base_.polapp_b2}},
    neck=dict(in_channels={{_base_.polapp_b2_channels}}))
optim_wrapper = {{_base_.polapp_mask_rcnn_optim_wrapper}}
