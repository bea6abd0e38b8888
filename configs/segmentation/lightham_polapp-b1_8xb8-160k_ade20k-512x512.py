# SegNeXt's LightHamHead on a PolaFormer++ b1 (PolaPP-b1) backbone on ADE20K, as in the
# authors' downstream/segmentation configs/PolaPP/polapp_b1.py: 512x512 crops, 160k
# iterations, batch 64 (8 GPUs x 8), AdamW lr 6e-5, fp32. The authors publish no ADE20K
# numbers.
#   bash tools/dist_train.sh configs/segmentation/lightham_polapp-b1_8xb8-160k_ade20k-512x512.py 8
# The backbone starts from the ImageNet weights at checkpoints/polapp_b1.pth, with its
# BN statistics frozen (norm_eval=True, as the authors), and gives stages 1-3
# (64, 192, 384 channels) to the head, which reads no other: ../_base_/polapp_backbones.py.
_base_ = ['./_base_/lightham_polapp_ade20k.py', '../_base_/polapp_backbones.py']

model = dict(
    backbone={{_base_.polapp_b1_stages123}},
    decode_head=dict(in_channels={{_base_.polapp_b1_stages123_channels}}))
