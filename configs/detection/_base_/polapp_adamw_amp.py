# The PolaFormer++ authors' detection optimisers (their downstream/detection configs),
# for a batch of 16 (8 GPUs x 2 images; auto_scale_lr base_batch_size=16 and the batch
# come from mmdet's bases), with their mixed precision: mmcv 1.x `fp16=dict()` is a
# *static* loss scale of 512, which is AmpOptimWrapper with loss_scale=512. (a float:
# the scale is reset to 512 after every step; steps with non-finite gradients are skipped).
# AmpOptimWrapper needs a GPU: to train on CPU (or in fp32), put the same optimizer and
# paramwise_cfg in an OptimWrapper (../README.md shows the child config; the tests do so).
# Bases may not share keys, so a config takes one by name:
# `optim_wrapper = {{_base_.polapp_mask_rcnn_optim_wrapper}}`.

# Mask R-CNN (Swin's recipe): AdamW lr 1e-4, weight decay 0.05, none on parameters whose
# name contains 'norm' (the blocks' LayerNorms, the output norms, the downsampling BNs;
# not the stem BNs patch_embed.proj.*, as in the authors' runs). The authors' keys
# 'absolute_pos_embed' and 'relative_position_bias_table' match no PolaPP parameter and
# are left out.
polapp_mask_rcnn_optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# RetinaNet (PVT's recipe): AdamW lr 1e-4, weight decay 1e-4 on every parameter.
polapp_retinanet_optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
