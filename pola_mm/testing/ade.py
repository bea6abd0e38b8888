"""A deterministic ADE20K-format semantic-segmentation dataset of shapes.

Each image is one of :func:`.shapes.render_shapes_image`'s pictures (filled shapes on a
textured background). Its label map follows ADE20K's raw encoding, which mmseg reads with
``reduce_zero_label=True``: 0 is "unlabelled" (ignored), 1 is the background, and shape
class ``i`` of :data:`.drawing.SHAPE_CLASSES` is ``i + 2``. After mmseg's reduction
the background is class 0 and the shapes are classes 1..4 of ADE20K's 150. The layout is
the one mmseg's ``ADE20KDataset`` reads::

    root/
      images/training/<index>.jpg, images/validation/<index>.jpg
      annotations/training/<index>.png, annotations/validation/<index>.png

The same ``seed`` always writes identical files.
"""
import os.path as osp
from typing import Dict, Sequence

import numpy as np
from mmengine.utils import mkdir_or_exist
from PIL import Image

from .drawing import SHAPE_CLASSES
from .shapes import render_shapes_image

ADE_SPLITS = ('training', 'validation')
BACKGROUND_LABEL = 1


# one colour per shape class for ``class_colours=True``: regions a model learns in minutes
CLASS_COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)], np.uint8)


def render_ade_sample(image_size: int, max_shapes: int, rng: np.random.Generator,
                      class_colours: bool = False):
    """Return an RGB image and its raw ADE label map, (image_size, image_size) uint8.

    With ``class_colours`` each shape is painted in its class's colour of
    :data:`CLASS_COLOURS` instead of a random one.
    """
    image, instances = render_shapes_image(image_size, max_shapes, rng)
    labels = np.full((image_size, image_size), BACKGROUND_LABEL, dtype=np.uint8)
    pixels = np.array(image)
    for label, mask in instances:
        labels[mask] = label + BACKGROUND_LABEL + 1
        if class_colours:
            pixels[mask] = CLASS_COLOURS[label]
    return Image.fromarray(pixels, mode='RGB'), labels


def make_shapes_ade(root: str,
                    num_images: Dict[str, int] = None,
                    image_size: int = 64,
                    max_shapes: int = 3,
                    seed: int = 0,
                    splits: Sequence[str] = ADE_SPLITS,
                    class_colours: bool = False) -> int:
    """Write the shapes dataset in ADE20K layout under ``root``.

    Args:
        root (str): Output folder (layout in the module docstring); use it as the
            config's ``data_root``.
        num_images (dict, optional): Images per split; 4 per split by default.
        image_size (int): Side of the square images in pixels (at least 32).
        max_shapes (int): Most shapes per image (at least 1).
        seed (int): Seed of the generator; each split gets its own stream.
        splits (Sequence[str]): Splits to write, among 'training' and 'validation'.
        class_colours (bool): paint each shape in its class's colour (an easy task).

    Returns:
        int: Number of classes present after ``reduce_zero_label`` (background + shapes).
    """
    unknown = set(splits) - set(ADE_SPLITS)
    if unknown:
        raise ValueError(f'unknown ADE splits {sorted(unknown)}; expected {ADE_SPLITS}')
    num_images = num_images or {split: 4 for split in splits}
    for split in splits:
        rng = np.random.default_rng([seed, ADE_SPLITS.index(split)])
        image_dir = osp.join(root, 'images', split)
        label_dir = osp.join(root, 'annotations', split)
        mkdir_or_exist(image_dir)
        mkdir_or_exist(label_dir)
        for index in range(num_images[split]):
            image, labels = render_ade_sample(image_size, max_shapes, rng, class_colours)
            name = f'ADE_{split[:5]}_{index:05d}'
            image.save(osp.join(image_dir, f'{name}.jpg'), quality=95)
            Image.fromarray(labels, mode='L').save(osp.join(label_dir, f'{name}.png'))
    return 1 + len(SHAPE_CLASSES)
