# Semantic FPN with a Pola-PVT-T backbone on ADE20K, 512x512 crops, 40k iterations,
# batch 16 (8 GPUs x 2). Paper (ICLR 2025, Table 2) mIoU: 38.3 (single scale).
#   bash tools/dist_train.sh configs/segmentation/fpn_pola-pvt-tiny_8xb2-40k_ade20k-512x512.py 8
# The backbone starts from the official ImageNet weights at checkpoints/pola_pvt_tiny.pth.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', '../_base_/pola_backbones.py',
    './_base_/ade20k_checked.py', 'mmseg::_base_/default_runtime.py',
    './_base_/schedule_40k_adamw.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone={{_base_.pola_pvt_tiny}},
    neck=dict(in_channels={{_base_.pola_pvt_channels}}),
    decode_head=dict(num_classes=150),
    # whole-image inference; for sliding windows use
    # --cfg-options model.test_cfg.mode=slide model.test_cfg.crop_size="(512,512)" \
    #     model.test_cfg.stride="(341,341)"
    test_cfg=dict(mode='whole'))
train_dataloader = dict(batch_size=2, num_workers=2)
