# Semantic FPN with a Pola-PVT-S backbone on ADE20K, 512x512 crops, 40k iterations,
# batch 16 (8 GPUs x 2). Paper (ICLR 2025, Table 2) mIoU: 41.0 (single scale).
# The backbone starts from the official ImageNet weights at checkpoints/pola_pvt_small.pth.
_base_ = ['./fpn_pola-pvt-tiny_8xb2-40k_ade20k-512x512.py']

model = dict(backbone={{_base_.pola_pvt_small}})
