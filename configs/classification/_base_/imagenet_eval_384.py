# ImageNet-1k evaluation of a released PolaFormer classifier at 384x384.
# Official test-time preprocessing of the 384 model (TEST.CROP False): resize the image
# to 384x384 directly (bicubic, PIL), no crop; ImageNet mean/std.
# See imagenet_eval_224.py for how `load_from` takes the released file.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_384.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

optim_wrapper = dict(clip_grad=dict(max_norm=5.0))

custom_hooks = [dict(type='pola_mm.OfficialClassifierCheckpointHook')]
