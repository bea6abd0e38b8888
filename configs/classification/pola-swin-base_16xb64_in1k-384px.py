# Pola-Swin-B-384: ImageNet-1k evaluation of the released weights (384x384).
# ImageNet-1k top-1 at 384 not listed in the paper or the official README.
#   python tools/test.py configs/classification/pola-swin-base_16xb64_in1k-384px.py checkpoints/pola_swin_base_384.pth
_base_ = ['./_base_/models/pola_swin.py', './_base_/imagenet_eval_384.py']

model = dict(
    backbone=dict(
        arch='base',
        pretrain_img_size=384,
        window_size=12,
        drop_path_rate=0.5),
    head=dict(in_channels=1024))

load_from = 'checkpoints/pola_swin_base_384.pth'
