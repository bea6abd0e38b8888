# Cascade Mask R-CNN 3x (multi-scale + crop training, as Swin's) with Pola-Swin-T,
# ImageNet-1K pretrained. Paper (Table 2): box AP 51.1 (AP50 70.0, AP75 55.6),
# mask AP 44.4 (AP50 67.3, AP75 48.3). The paper's Swin-T row (50.4 / 43.7) is Swin's
# cascade, whose three box heads are 4conv1fc with SyncBN and a GIoU loss (weight 10) on
# decoded boxes, as here (mmdet's ConvNeXt cascade configs use the same heads).
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    './_base_/coco_instance_ms-crop-3x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/pola_backbones.py',
    './_base_/pola_adamw.py',
]
model = dict(
    backbone={{_base_.pola_swin_tiny}},
    neck=dict(in_channels={{_base_.pola_swin_tiny_channels}}))
optim_wrapper = {{_base_.pola_optim_wrapper}}

# One box head per stage; the stages differ only in their box coder's target stds.
model.update(roi_head=dict(bbox_head=[
    dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                        target_stds=stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
    for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
]))
