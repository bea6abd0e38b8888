# Pola-Swin-S: fine-tuning the released ImageNet backbone on your own ImageFolder-style
# dataset (see _base_/custom_finetune.py for the folder layout and the class count).
# Paper (ICLR 2025) ImageNet-1k top-1: 83.6.
#   python tools/train.py configs/classification/pola-swin-small_in1k-pre_8xb32_custom.py
_base_ = ['./_base_/models/pola_swin.py', './_base_/custom_finetune.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/pola_swin_small.pth')),
    head=dict(num_classes=1000, in_channels=768))  # num_classes: your class count
