# Mask R-CNN 1x with Pola-PVT-S, ImageNet-1K pretrained.
# Paper (Table 2): box AP 43.9 (AP50 66.1, AP75 47.9), mask AP 40.2 (AP50 63.1, AP75 43.0).
_base_ = './mask-rcnn_pola-pvt-t_fpn_1x_coco.py'
model = dict(backbone={{_base_.pola_pvt_small}})
