"""A deterministic COCO-format detection dataset of shapes, with instance masks.

Each image shows a few filled shapes (the classes of :data:`.drawing.SHAPE_CLASSES`)
in random colours and sizes on a textured background (noise over a colour gradient and
stripes). Later shapes may occlude earlier ones; every instance's mask, box and area are
those of its visible part, and an instance left with too few visible pixels is dropped.
The layout is the one mmdet's ``CocoDataset`` reads::

    root/
      annotations/instances_train.json, instances_val.json
      train/<index>.png, val/<index>.png

The same ``seed`` always writes identical files.
"""
import json
import os.path as osp
from typing import Dict, List, Sequence

import numpy as np
from mmengine.utils import mkdir_or_exist
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .drawing import SHAPE_CLASSES, draw_shape

MIN_VISIBLE_PIXELS = 30


def textured_background(image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Return an ``(image_size, image_size, 3)`` uint8 background: gradient, stripes, noise."""
    ramp = np.linspace(0, 1, image_size, dtype=np.float32)
    start, end = rng.uniform(0, 90, size=(2, 3))
    angle = rng.uniform(0, np.pi)
    position = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    gradient = start + (end - start) * position[..., None] / max(position.max(), 1e-6)
    period = rng.uniform(6, 24)
    stripes = 12 * np.sin(2 * np.pi * position * image_size / period)[..., None]
    noise = rng.normal(0, 10, size=(image_size, image_size, 3))
    return np.clip(gradient + stripes + noise, 0, 255).astype(np.uint8)


def render_shapes_image(image_size: int, max_shapes: int, rng: np.random.Generator):
    """Draw 1..``max_shapes`` shapes; return the image and ``[(class index, mask)]``.

    Masks are boolean ``(image_size, image_size)`` arrays of the visible pixels.
    """
    image = Image.fromarray(textured_background(image_size, rng), mode='RGB')
    draw = ImageDraw.Draw(image)
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        radius = rng.uniform(0.08, 0.22) * image_size
        centre = rng.uniform(radius, image_size - radius, size=2)
        colour = tuple(int(c) for c in rng.integers(110, 256, size=3))
        draw_shape(draw, SHAPE_CLASSES[label], centre, radius, colour)
        canvas = Image.new('L', (image_size, image_size), 0)
        draw_shape(ImageDraw.Draw(canvas), SHAPE_CLASSES[label], centre, radius, 255)
        mask = np.asarray(canvas) > 0
        instances = [(lab, old & ~mask) for lab, old in instances]
        instances.append((label, mask))
    visible = [(lab, m) for lab, m in instances if m.sum() >= MIN_VISIBLE_PIXELS]
    return image, visible


def _annotation(mask: np.ndarray, label: int, image_id: int, ann_id: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=label + 1,
        bbox=[x, y, w, h],
        area=float(mask.sum()),
        segmentation=rle,
        iscrowd=0)


def make_shapes_coco(root: str,
                     num_images: Dict[str, int] = None,
                     image_size: int = 256,
                     max_shapes: int = 4,
                     seed: int = 0,
                     splits: Sequence[str] = ('train', 'val')) -> List[str]:
    """Write the shapes detection dataset under ``root``; return the class names.

    Args:
        root (str): Output folder (layout in the module docstring).
        num_images (dict, optional): Images per split; 8 per split by default.
        image_size (int): Side of the square images in pixels (at least 32).
        max_shapes (int): Most shapes drawn per image (at least 1).
        seed (int): Seed of the generator; each split gets its own stream.
        splits (Sequence[str]): Splits to write.

    Returns:
        list[str]: Class names; category ``i + 1`` of the COCO files is ``names[i]``.
    """
    if image_size < 32:
        raise ValueError(f'image_size must be at least 32 pixels, got {image_size}')
    if max_shapes < 1:
        raise ValueError(f'max_shapes must be at least 1, got {max_shapes}')
    num_images = num_images or {split: 8 for split in splits}
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(SHAPE_CLASSES)]
    mkdir_or_exist(osp.join(root, 'annotations'))
    for split_index, split in enumerate(splits):
        rng = np.random.default_rng([seed, split_index])
        mkdir_or_exist(osp.join(root, split))
        images, annotations = [], []
        for image_id in range(1, num_images[split] + 1):
            image, instances = render_shapes_image(image_size, max_shapes, rng)
            file_name = f'{image_id:05d}.png'
            image.save(osp.join(root, split, file_name))
            images.append(
                dict(id=image_id, file_name=file_name, width=image_size, height=image_size))
            for label, mask in instances:
                annotations.append(
                    _annotation(mask, label, image_id, len(annotations) + 1))
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return list(SHAPE_CLASSES)


def shapes_coco_dataloaders(root: str, image_size: int, batch_size: int = 2,
                            num_workers: int = 0, with_mask: bool = True) -> dict:
    """Config overrides pointing an mmdet config's loaders and evaluators at ``root``.

    The returned dict merges into an mmdet COCO config (``cfg.merge_from_dict``) and
    replaces its data: pipelines resized to ``image_size``, ``metainfo`` with the shape
    classes, and CocoMetric on the val annotations (``segm`` too when ``with_mask``).
    """
    metainfo = dict(classes=SHAPE_CLASSES)
    scale = (image_size, image_size)
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ]

    def loader(split, pipeline, shuffle):
        return dict(
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
            batch_sampler=None if not shuffle else dict(type='AspectRatioBatchSampler'),
            dataset=dict(
                type='CocoDataset',
                _delete_=True,
                data_root=root,
                metainfo=metainfo,
                ann_file=f'annotations/instances_{split}.json',
                data_prefix=dict(img=f'{split}/'),
                filter_cfg=dict(filter_empty_gt=shuffle, min_size=4),
                pipeline=pipeline))

    val_loader = loader('val', test_pipeline, shuffle=False)
    evaluator = dict(
        type='CocoMetric',
        _delete_=True,
        ann_file=osp.join(root, 'annotations', 'instances_val.json'),
        metric=['bbox', 'segm'] if with_mask else ['bbox'],
        format_only=False)
    return dict(
        train_dataloader=loader('train', train_pipeline, shuffle=True),
        val_dataloader=val_loader,
        test_dataloader=val_loader,
        val_evaluator=evaluator,
        test_evaluator=evaluator)
