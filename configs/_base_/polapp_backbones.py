# PolaFormer++ (PolaPP) backbones b0-b5 with their ImageNet-1K checkpoints and output
# channels, shared by the detection and segmentation configs. Bases may not share keys, so
# a config takes them by name:
# `model = dict(backbone={{_base_.polapp_b2}}, neck=dict(in_channels={{_base_.polapp_b2_channels}}))`.
#
# Settings as in the authors' downstream configs: the variant's released stochastic depth
# (b0-b2 0.1, b3 0.15, b4 0.4, b5 0.55), all four stages out, each through the authors'
# extra output LayerNorm (`out_norms`). The released files (weights under 'model') load
# as they are; unlike the authors' configs (which pass them on the command line and
# silently train from scratch without), the path is part of the config.
#
# norm_eval=True: the BatchNorms of the stem and of the downsampling layers keep their
# ImageNet statistics in training (their affine weights still train). The authors'
# segmentation copy does this; their detection copy ignores norm_eval and trains the
# statistics on 2 images per GPU, unsynchronised. Frozen statistics do not depend on the
# per-GPU batch or the number of GPUs, and are what mmdet's ResNet configs do. To train
# the statistics as the authors' detection runs did, set `model.backbone.norm_eval=False`
# (with several GPUs, norm_cfg=dict(type='SyncBN', requires_grad=True) synchronises them).
_base_ = ['./pola_runtime.py']

polapp_b0 = dict(
    _delete_=True,
    type='pola_mm.PolaPP',
    arch='b0',
    drop_path_rate=0.1,
    out_indices=(0, 1, 2, 3),
    norm_eval=True,
    norm_cfg=dict(type='BN', requires_grad=True),
    out_norms=True,
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b0.pth'))
polapp_b1 = dict(
    polapp_b0, arch='b1',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b1.pth'))
polapp_b2 = dict(
    polapp_b0, arch='b2',
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b2.pth'))
polapp_b3 = dict(
    polapp_b0, arch='b3', drop_path_rate=0.15,
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b3.pth'))
polapp_b4 = dict(
    polapp_b0, arch='b4', drop_path_rate=0.4,
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b4.pth'))
polapp_b5 = dict(
    polapp_b0, arch='b5', drop_path_rate=0.55,
    init_cfg=dict(type='Pretrained', checkpoint='checkpoints/polapp_b5.pth'))
polapp_b0_channels = [32, 64, 128, 384]
polapp_b1_channels = [32, 64, 192, 384]
polapp_b2_channels = [64, 128, 256, 512]
polapp_b3_channels = [64, 128, 320, 512]
polapp_b4_channels = [96, 192, 384, 512]
polapp_b5_channels = [96, 192, 448, 640]

# Stages 1-3 only (strides 8, 16, 32), for heads that never read the stride-4 map
# (RetinaNet's FPN, SegNeXt's LightHamHead). The authors output all four stages and skip
# the first in the neck/head, which leaves the stage-0 output norm without a gradient,
# so they need DDP's find_unused_parameters=True; here every parameter gets a gradient.
# The stage-0 blocks still run: stage 1 is computed from their output.
polapp_b1_stages123 = dict(polapp_b1, out_indices=(1, 2, 3))
polapp_b2_stages123 = dict(polapp_b2, out_indices=(1, 2, 3))
polapp_b3_stages123 = dict(polapp_b3, out_indices=(1, 2, 3))
polapp_b1_stages123_channels = polapp_b1_channels[1:]
polapp_b2_stages123_channels = polapp_b2_channels[1:]
polapp_b3_stages123_channels = polapp_b3_channels[1:]
