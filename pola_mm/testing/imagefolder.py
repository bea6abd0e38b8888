"""A small, deterministic ImageFolder-style classification dataset for tests and demos.

The layout is the one torchvision's ``ImageFolder`` and MMPretrain's ``CustomDataset``
read without an annotation file::

    root/
      train/<class name>/<index>.png
      val/<class name>/<index>.png

Each class is one kind of filled shape (disc, square, triangle, cross:
:func:`.drawing.draw_shape`) drawn in a random colour, size and position on a noisy
background, so a classifier can actually learn the task. The same ``seed`` always writes
byte-identical files.
"""
import os.path as osp
from typing import Dict, List, Sequence

import numpy as np
from mmengine.utils import mkdir_or_exist
from PIL import Image, ImageDraw

from .drawing import SHAPE_CLASSES, draw_shape


def render_shape_image(shape: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Return an RGB ``image_size`` x ``image_size`` image showing one ``shape``."""
    background = rng.integers(0, 96, size=(image_size, image_size, 3), dtype=np.uint8)
    image = Image.fromarray(background, mode='RGB')
    radius = rng.uniform(0.2, 0.35) * image_size
    centre = rng.uniform(radius, image_size - radius, size=2)
    colour = tuple(int(c) for c in rng.integers(128, 256, size=3))
    draw_shape(ImageDraw.Draw(image), shape, centre, radius, colour)
    return image


def make_shapes_imagefolder(root: str,
                            num_classes: int = 3,
                            images_per_class: Dict[str, int] = None,
                            image_size: int = 64,
                            seed: int = 0,
                            splits: Sequence[str] = ('train', 'val')) -> List[str]:
    """Write an ImageFolder-style shapes dataset under ``root`` and return its class names.

    Args:
        root (str): Output folder; ``root/<split>/<class>/<index>.png`` are written.
        num_classes (int): How many shape classes to use, from ``SHAPE_CLASSES``.
        images_per_class (dict, optional): Images per class for each split.
            Defaults to 4 per class in every split.
        image_size (int): Side of the square images in pixels.
        seed (int): Seed of the generator; the same seed writes identical files.
        splits (Sequence[str]): Sub-folders to write.

    Returns:
        list[str]: The class names, in the sorted order that ImageFolder readers
        assign to labels 0, 1, ...
    """
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f'num_classes must be in [1, {len(SHAPE_CLASSES)}], got {num_classes}')
    if image_size < 8:
        raise ValueError(f'image_size must be at least 8 pixels, got {image_size}')
    classes = sorted(SHAPE_CLASSES[:num_classes])
    images_per_class = images_per_class or {split: 4 for split in splits}
    rng = np.random.default_rng(seed)
    for split in splits:
        for shape in classes:
            folder = osp.join(root, split, shape)
            mkdir_or_exist(folder)
            for index in range(images_per_class[split]):
                image = render_shape_image(shape, image_size, rng)
                image.save(osp.join(folder, f'{index:04d}.png'))
    return classes
