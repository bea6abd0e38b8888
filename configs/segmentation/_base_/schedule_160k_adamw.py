# The paper's segmentation optimiser: AdamW, lr 2e-4, weight decay 1e-3, for a batch of
# 16 (8 GPUs x 2 images). No weight decay on norms, positional encodings (PVT's pos_embed,
# each Pola layer's positional_encoding, Swin's relative_position_bias_table) and the Pola
# attention's learnable scale and power. 160k iterations, 1500 warm-up iterations, then
# linear-power poly decay (mmseg's Swin UperNet recipe).
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-3),
    paramwise_cfg=dict(
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'positional_encoding': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'attn.scale': dict(decay_mult=0.),
            'attn.power': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
