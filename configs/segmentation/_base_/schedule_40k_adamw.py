# The optimiser of schedule_160k_adamw.py (the paper's AdamW lr and weight decay,
# pola_mm's no-weight-decay list) over 40k iterations with the poly decay (power 0.9,
# no warm-up) of the Semantic FPN recipe of PVT.
_base_ = ['./schedule_160k_adamw.py']

param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)
]
train_cfg = dict(max_iters=40000, val_interval=4000)
default_hooks = dict(checkpoint=dict(interval=4000))
