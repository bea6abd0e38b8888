# mmseg's ADE20K data settings (512x512 crops, reduce_zero_label, multi-scale + flip TTA)
# with label maps loaded by pola_mm's LoadCheckedSegAnnotations, which names the file
# when a label map is missing, has another size than its image, or holds labels outside
# the 150 classes.
_base_ = ['mmseg::_base_/datasets/ade20k.py']

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
    # labels are loaded after Resize: metrics compare at the original size
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
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [checked_annotations],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
