# ImageNet-1k evaluation of a released PolaFormer classifier at 224x224.
# Official test-time preprocessing: resize the shorter side to int(224 / 0.875) = 256
# (bicubic, PIL), centre crop 224, ImageNet mean/std (the dataset base below).
# `load_from` takes the released file as it is: the hook converts the official key layout
# (backbone + `head.*`) into this classifier's (`backbone.*`, `head.fc.*`) and rejects a
# file of another architecture.
# These configs evaluate the released weights; they do not reproduce the ImageNet
# pretraining. The training settings they carry are mmpretrain's Swin ImageNet recipe
# (AdamW, lr 1e-3 at batch 1024, weight decay 0.05, 20 warm-up epochs, cosine, 300 epochs,
# gradient clip 5.0), with label smoothing 0.1 (the model bases) and without the recipe's
# Mixup and CutMix; `load_from` starts from the released weights. How the released
# models were trained:
# - Pola-Swin (the official config.py defaults): the same epochs, warm-up, lr per batch
#   (5e-4 per 512), weight decay and clip.
# - Pola-PVT (the official cfgs/pola_pvt_*.yaml): another recipe, 300 + 10 cooldown
#   epochs, 5 warm-up epochs, no gradient clip for T/S and 1.0 for M/L.
# - PolaFormer++: b0-b3 the same epochs, warm-up, lr per batch and clip (not the same
#   minimum lr); b4 and b5 other warm-up, clipping and lr; every model with EMA.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

optim_wrapper = dict(clip_grad=dict(max_norm=5.0))

custom_hooks = [dict(type='pola_mm.OfficialClassifierCheckpointHook')]
