# RetinaNet 1x with PolaFormer++ b2 (PolaPP-b2), ImageNet-1K pretrained, as in the
# authors' downstream/detection retinanet_b2_1x.py: 12 epochs, batch 16 (8 GPUs x 2),
# AdamW lr 1e-4 / weight decay 1e-4, 500 warm-up iterations, fp16 with a static loss
# scale of 512 (AmpOptimWrapper: needs a GPU). The authors publish no COCO numbers.
# BN statistics: see ../_base_/polapp_backbones.py.
#
# The FPN reads strides 8-32 and adds P6/P7 from the stride-32 map ('on_input'). The
# authors output all four stages and skip the first with start_level=1, which leaves the
# stage-0 output norm unused (they run DDP with find_unused_parameters=True). Here the
# backbone outputs stages 1-3 only and the FPN starts at its first input (start_level=0):
# the same lateral/output/extra convs on the same maps, the same parameter names
# (lateral_convs.0-2, fpn_convs.0-4), so the detector computes the same function and DDP
# needs no find_unused_parameters.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/polapp_backbones.py',
    './_base_/polapp_adamw_amp.py',
]
model = dict(
    backbone={{_base_.polapp_b2_stages123}},
    neck=dict(in_channels={{_base_.polapp_b2_stages123_channels}}, start_level=0))
optim_wrapper = {{_base_.polapp_retinanet_optim_wrapper}}
