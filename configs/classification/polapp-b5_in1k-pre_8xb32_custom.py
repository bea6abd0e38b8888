# PolaFormer++ b5: fine-tuning the released ImageNet classifier (backbone and projection
# neck; a new head) on your own ImageFolder-style dataset (see _base_/custom_finetune.py for
# the folder layout and the class count).
# Official README ImageNet-1k top-1: 85.6.
#   python tools/train.py configs/classification/polapp-b5_in1k-pre_8xb32_custom.py
_base_ = ['./_base_/models/polapp.py', './_base_/custom_finetune_square.py']

model = dict(
    backbone=dict(
        arch='b5',
        drop_path_rate=0.55,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b5.pth')),
    neck=dict(
        in_channels=640,
        out_channels=2560,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b5.pth')),
    head=dict(num_classes=1000, in_channels=2560))  # num_classes: your class count
