# Pola-Swin-S: ImageNet-1k evaluation of the released weights (224x224).
# Paper (ICLR 2025) ImageNet-1k top-1: 83.6.
#   python tools/test.py configs/classification/pola-swin-small_16xb64_in1k.py checkpoints/pola_swin_small.pth
_base_ = ['./_base_/models/pola_swin.py', './_base_/imagenet_eval_224.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3),
    head=dict(in_channels=768))

load_from = 'checkpoints/pola_swin_small.pth'
