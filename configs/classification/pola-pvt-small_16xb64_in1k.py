# Pola-PVT-S: ImageNet-1k evaluation of the released weights (224x224).
# Paper (ICLR 2025) ImageNet-1k top-1: 81.9.
#   python tools/test.py configs/classification/pola-pvt-small_16xb64_in1k.py checkpoints/pola_pvt_small.pth
_base_ = ['./_base_/models/pola_pvt.py', './_base_/imagenet_eval_224.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.1),
    head=dict(in_channels=512))

load_from = 'checkpoints/pola_pvt_small.pth'
