# Mask R-CNN 1x with PolaFormer++ b4 (PolaPP-b4), ImageNet-1K pretrained, as in the
# authors' maskrcnn_b4_1x.py; settings of mask-rcnn_polapp-b2_fpn_1x_coco.py.
# The authors publish no COCO numbers.
_base_ = './mask-rcnn_polapp-b2_fpn_1x_coco.py'
model = dict(
    backbone={{_base_.polapp_b4}},
    neck=dict(in_channels={{_base_.polapp_b4_channels}}))
