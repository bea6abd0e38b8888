"""Deterministic synthetic datasets (shapes) for tests and the demo; nothing is downloaded."""
from .drawing import SHAPE_CLASSES, draw_shape
from .imagefolder import make_shapes_imagefolder
from .shapes import make_shapes_coco, shapes_coco_dataloaders

__all__ = ['SHAPE_CLASSES', 'draw_shape', 'make_shapes_coco', 'make_shapes_imagefolder',
           'shapes_coco_dataloaders']
