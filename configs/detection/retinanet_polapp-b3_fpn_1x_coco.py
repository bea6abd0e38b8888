# RetinaNet 1x with PolaFormer++ b3 (PolaPP-b3), ImageNet-1K pretrained, as in the
# authors' retinanet_b3_1x.py; settings (and stages 1-3 into the FPN) of
# retinanet_polapp-b2_fpn_1x_coco.py. The authors publish no COCO numbers.
_base_ = './retinanet_polapp-b2_fpn_1x_coco.py'
model = dict(
    backbone={{_base_.polapp_b3_stages123}},
    neck=dict(in_channels={{_base_.polapp_b3_stages123_channels}}))
