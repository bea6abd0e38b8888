"""The shape classes of the generated datasets and how one shape is drawn.

Every shapes dataset of :mod:`pola_mm.testing` (classification, detection, segmentation)
draws its objects with :func:`draw_shape`, so a class looks the same in all of them.
"""
from typing import Sequence, Union

from PIL import ImageDraw

SHAPE_CLASSES = ('disc', 'square', 'triangle', 'cross')


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: Sequence[float],
               radius: float, colour: Union[int, tuple]) -> None:
    """Draw one filled ``shape`` of half-size ``radius`` around ``centre``.

    Args:
        draw (ImageDraw.ImageDraw): Drawing context of the target image.
        shape (str): One of :data:`SHAPE_CLASSES`. All four fit the square of side
            ``2 * radius`` around ``centre``: a disc of radius ``radius``, that square,
            a triangle with the square's bottom side as base and apex at the middle of
            its top side, and a cross of two bars ``2 * radius / 3`` wide.
        centre (Sequence[float]): Centre ``(x, y)`` in pixels.
        radius (float): Half of the shape's width and height, in pixels.
        colour (int | tuple): Fill colour in the image's mode, e.g. ``(r, g, b)`` for
            an RGB image or 255 for an ``L`` mask.

    Raises:
        ValueError: for a ``shape`` not in :data:`SHAPE_CLASSES`.
    """
    x, y = centre
    if shape == 'disc':
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    elif shape == 'square':
        draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=colour)
    elif shape == 'triangle':
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)],
                     fill=colour)
    elif shape == 'cross':
        bar = radius / 3
        draw.rectangle((x - radius, y - bar, x + radius, y + bar), fill=colour)
        draw.rectangle((x - bar, y - radius, x + bar, y + radius), fill=colour)
    else:
        raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPE_CLASSES}')
