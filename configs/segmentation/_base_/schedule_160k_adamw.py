# The PolaFormer segmentation optimiser: AdamW with the paper's lr 2e-4 and weight decay
# 1e-3, for a batch of 16 (8 GPUs x 2 images). No weight decay on the parameters of
# ../../_base_/pola_no_weight_decay.py: pola_mm's choice for fine-tuning, not the
# paper's (see that file). 160k iterations, 1500 warm-up iterations, then linear-power
# poly decay (mmseg's Swin UperNet recipe).
_base_ = ['mmseg::_base_/schedules/schedule_160k.py', '../../_base_/pola_no_weight_decay.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-3),
    paramwise_cfg=dict(custom_keys={{_base_.pola_no_decay_keys}}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
