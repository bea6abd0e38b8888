# Pola-PVT-L: fine-tuning the released ImageNet backbone on your own ImageFolder-style
# dataset (see _base_/custom_finetune.py for the folder layout and the class count).
# ImageNet-1k top-1 not listed in the paper or the official README.
#   python tools/train.py configs/classification/pola-pvt-large_in1k-pre_8xb32_custom.py
_base_ = ['./_base_/models/pola_pvt.py', './_base_/custom_finetune.py']

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pola_pvt_large.pth')),
    head=dict(num_classes=1000, in_channels=512))  # num_classes: your class count
