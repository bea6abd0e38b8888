# ImageNet-1k evaluation of a released PolaFormer classifier at 224x224.
# Official test-time preprocessing: resize the shorter side to int(224 / 0.875) = 256
# (bicubic, PIL), centre crop 224, ImageNet mean/std (the dataset base below).
# `load_from` takes the released file as it is: the hook converts the official key layout
# (backbone + `head.*`) into this classifier's (`backbone.*`, `head.fc.*`) and rejects a
# file of another architecture. The optimiser and schedule are mmpretrain's Swin ImageNet
# recipe (AdamW, lr 1e-3 at batch 1024, cosine, 300 epochs), which PolaFormer's code follows
# (PolaFormer++ b3's too; b4 and b5 were trained with other warm-up, clipping and lr, and
# every PolaFormer++ model with EMA), with label smoothing 0.1 (the model bases); the
# recipe's Mixup and CutMix are not set, and
# `load_from` starts from the released weights: these configs evaluate, they do not
# pretrain.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

optim_wrapper = dict(clip_grad=dict(max_norm=5.0))

custom_hooks = [dict(type='pola_mm.OfficialClassifierCheckpointHook')]
