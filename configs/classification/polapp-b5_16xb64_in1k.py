# PolaFormer++ b5: ImageNet-1k evaluation of the released weights (224x224).
# Official README ImageNet-1k top-1: 85.6.
#   python tools/test.py configs/classification/polapp-b5_16xb64_in1k.py checkpoints/polapp_b5.pth
_base_ = ['./_base_/models/polapp.py', './_base_/imagenet_eval_224_square.py']

model = dict(
    backbone=dict(
        arch='b5',
        drop_path_rate=0.55),
    neck=dict(in_channels=640, out_channels=2560),
    head=dict(in_channels=2560))

load_from = 'checkpoints/polapp_b5.pth'
