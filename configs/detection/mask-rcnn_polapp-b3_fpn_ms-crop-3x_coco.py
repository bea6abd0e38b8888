# Mask R-CNN 3x with PolaFormer++ b3 (PolaPP-b3), ImageNet-1K pretrained, as in the
# authors' maskrcnn_b3_3x.py; settings of mask-rcnn_polapp-b2_fpn_ms-crop-3x_coco.py.
# The authors publish no COCO numbers.
_base_ = './mask-rcnn_polapp-b2_fpn_ms-crop-3x_coco.py'
model = dict(
    backbone={{_base_.polapp_b3}},
    neck=dict(in_channels={{_base_.polapp_b3_channels}}))
