# UperNet with a Pola-Swin-T backbone on ADE20K, 512x512 crops, 160k iterations,
# batch 16 (8 GPUs x 2). Paper (ICLR 2025, Table 2) mIoU: 45.8 (single scale).
#   bash tools/dist_train.sh configs/segmentation/upernet_pola-swin-tiny_8xb2-160k_ade20k-512x512.py 8
# The backbone starts from the official ImageNet weights at checkpoints/pola_swin_tiny.pth.
# drop_path_rate 0.2 (../_base_/pola_backbones.py) is pola_mm's choice: Pola-Swin-T's
# ImageNet value (the official cfgs/pola_swin_t.yaml); no source gives PolaFormer's
# segmentation value. mmseg's Swin-T UperNet, whose schedule this config follows, uses 0.3.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', '../_base_/pola_backbones.py',
    './_base_/ade20k_checked.py', 'mmseg::_base_/default_runtime.py',
    './_base_/schedule_160k_adamw.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone={{_base_.pola_swin_tiny}},
    decode_head=dict(in_channels={{_base_.pola_swin_tiny_channels}}, num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    # whole-image inference; for sliding windows use
    # --cfg-options model.test_cfg.mode=slide model.test_cfg.crop_size="(512,512)" \
    #     model.test_cfg.stride="(341,341)"
    test_cfg=dict(mode='whole'))
train_dataloader = dict(batch_size=2, num_workers=2)
