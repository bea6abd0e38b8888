# RetinaNet 1x with Pola-PVT-S, ImageNet-1K pretrained.
# Paper (Table 2): box AP 43.2 (AP50 64.1, AP75 46.4).
_base_ = './retinanet_pola-pvt-t_fpn_1x_coco.py'
model = dict(backbone={{_base_.pola_pvt_small}})
