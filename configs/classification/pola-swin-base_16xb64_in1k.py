# Pola-Swin-B: ImageNet-1k evaluation of the released weights (224x224).
# Paper (ICLR 2025) ImageNet-1k top-1: 83.8.
#   python tools/test.py configs/classification/pola-swin-base_16xb64_in1k.py checkpoints/pola_swin_base.pth
_base_ = ['./_base_/models/pola_swin.py', './_base_/imagenet_eval_224.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5),
    head=dict(in_channels=1024))

load_from = 'checkpoints/pola_swin_base.pth'
