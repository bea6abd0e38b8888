# The PolaFormer detection optimiser: AdamW with the paper's lr 1e-4 and weight decay
# 1e-4 (PolaFormer, ICLR 2025, appendix; results in its Table 2), for a batch of 16
# (8 GPUs x 2 images). No weight decay on the parameters of
# ../../_base_/pola_no_weight_decay.py: pola_mm's choice for fine-tuning, not the
# paper's (see that file).
# Bases may not share keys, so a config takes this one by
# `optim_wrapper = {{_base_.pola_optim_wrapper}}`. The batch size (2 per GPU) and
# auto_scale_lr = dict(enable=False, base_batch_size=16) come from mmdet's bases.
_base_ = ['../../_base_/pola_no_weight_decay.py']

pola_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={{_base_.pola_no_decay_keys}}))
