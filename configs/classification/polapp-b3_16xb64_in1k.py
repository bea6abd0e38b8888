# PolaFormer++ b3: ImageNet-1k evaluation of the released weights (224x224).
# Official README ImageNet-1k top-1: 84.3.
#   python tools/test.py configs/classification/polapp-b3_16xb64_in1k.py checkpoints/polapp_b3.pth
_base_ = ['./_base_/models/polapp.py', './_base_/imagenet_eval_224_square.py']

model = dict(
    backbone=dict(
        arch='b3',
        drop_path_rate=0.15),
    neck=dict(in_channels=512, out_channels=2048),
    head=dict(in_channels=2048))

load_from = 'checkpoints/polapp_b3.pth'
