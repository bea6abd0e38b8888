# SegNeXt's recipe (mmseg's segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py:
# LightHamHead, AdamW lr 6e-5 / weight decay 0.01 with none on norms and lr x10 on the
# head, 1500 warm-up iterations then linear poly decay over 160k iterations, whole-image
# inference) with the PolaFormer++ authors' changes (downstream/segmentation
# configs/PolaPP/polapp_b{1,2,3}.py), fp32 as theirs:
# - the SegNeXt-B/L head width (channels = ham_channels = 512), reading stages 1-3;
# - batch 8 per GPU (64 on 8 GPUs; SegNeXt's is 16 in all, README.md);
# - validation and checkpoints every 8000 iterations;
# - test images resized to multiples of 32 (ResizeToMultiple) after the (2048, 512)
#   resize, as the authors do, rather than padded (the preprocessor's size_divisor=32
#   then adds nothing);
# - label maps read by pola_mm's LoadCheckedSegAnnotations (as ./ade20k_checked.py),
#   which names the file when a label map is missing, has another size than its image,
#   or holds labels outside the 150 classes.
# A config adds the backbone (its stages 1-3) and the head's in_channels.
_base_ = ['mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py']

checked_annotations = dict(
    type='pola_mm.LoadCheckedSegAnnotations', num_classes=150, reduce_zero_label=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    checked_annotations,
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    # labels are loaded after the resizes: metrics compare at the original size
    checked_annotations,
    dict(type='PackSegInputs')
]
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [dict(type='ResizeToMultiple', size_divisor=32)],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [checked_annotations],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

model = dict(
    decode_head=dict(
        in_index=[0, 1, 2],  # the backbone's outputs are stages 1, 2 and 3
        channels=512,
        ham_channels=512,
        # mmseg's NMF2D uses inv_t=1 whatever is given, as the authors' copy does
        ham_kwargs=dict(
            MD_S=1, MD_R=16, train_steps=6, eval_steps=7, inv_t=100, rand_init=True)))

# the authors validate and save every 8000 iterations (SegNeXt's recipe: 16000)
train_cfg = dict(val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
# --auto-scale-lr scales lr 6e-5 by (total batch) / 64
auto_scale_lr = dict(enable=False, base_batch_size=64)
