# Pola-PVT-L: ImageNet-1k evaluation of the released weights (224x224).
# ImageNet-1k top-1 not listed in the paper or the official README.
#   python tools/test.py configs/classification/pola-pvt-large_16xb64_in1k.py checkpoints/pola_pvt_large.pth
_base_ = ['./_base_/models/pola_pvt.py', './_base_/imagenet_eval_224.py']

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3),
    head=dict(in_channels=512))

load_from = 'checkpoints/pola_pvt_large.pth'
