# Parameters pola_mm fine-tunes without weight decay, as MMEngine custom_keys (a key
# matches every parameter name that contains it): normalisation layers ('norm' also
# matches norm1, norm2 and downsample.norm), the positional tables (PVT's pos_embed, each
# Pola layer's positional_encoding, Swin's relative_position_bias_table) and the Pola
# attention's learnable scale and power.
# This list is pola_mm's choice, not the paper's: the paper gives only the downstream
# AdamW lr and weight decay, and the authors' ImageNet training did decay pos_embed,
# positional_encoding, scale and power (it exempted 1-D parameters, biases and
# relative_position_bias_table).
# It follows mmdet's and mmseg's Swin configs, which exempt norms and Swin's positional
# tables (absolute_pos_embed, relative_position_bias_table); PVT's pos_embed, the Pola
# positional_encoding and the Pola scale and power are exempted likewise (mmdet's own
# PVT configs exempt nothing).
# Bases may not share keys, so an optimiser config takes them by name:
# `paramwise_cfg=dict(custom_keys={{_base_.pola_no_decay_keys}})`.
pola_no_decay_keys = {
    'norm': dict(decay_mult=0.),
    'pos_embed': dict(decay_mult=0.),
    'positional_encoding': dict(decay_mult=0.),
    'relative_position_bias_table': dict(decay_mult=0.),
    'attn.scale': dict(decay_mult=0.),
    'attn.power': dict(decay_mult=0.),
}
