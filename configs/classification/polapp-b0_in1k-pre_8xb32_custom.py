# PolaFormer++ b0: fine-tuning the released ImageNet classifier (backbone and projection
# neck; a new head) on your own ImageFolder-style dataset (see _base_/custom_finetune.py for
# the folder layout and the class count).
# Official README ImageNet-1k top-1: 76.9.
#   python tools/train.py configs/classification/polapp-b0_in1k-pre_8xb32_custom.py
_base_ = ['./_base_/models/polapp.py', './_base_/custom_finetune_square.py']

model = dict(
    backbone=dict(
        arch='b0',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b0.pth')),
    neck=dict(
        in_channels=384,
        out_channels=2048,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b0.pth')),
    head=dict(num_classes=1000, in_channels=2048))  # num_classes: your class count
