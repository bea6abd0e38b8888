"""Resizing of learnable positional tables stored as square token grids."""
import math
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor


def square_grid_side(num_tokens: int, name: str = 'positional table') -> int:
    """Side S of the square S x S grid a table of ``num_tokens`` tokens was trained on."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f'{name} has {num_tokens} tokens, which is not a square grid')
    return side


def resize_token_grid(tokens: Tensor, src_shape: Tuple[int, int], hw_shape: Tuple[int, int],
                      mode: str) -> Tensor:
    """Resize a (1, h*w, C) table of row-major tokens from its (h, w) grid to (H, W).

    Interpolates in float32 with ``align_corners=False`` and returns the input dtype.
    A table that already has the target size is returned unchanged (bit-exact).

    Args:
        tokens (Tensor): (1, h*w, C) table.
        src_shape (tuple[int, int]): the table's grid (h, w).
        hw_shape (tuple[int, int]): target grid (H, W).
        mode (str): 'bicubic' or 'bilinear'.

    Returns:
        Tensor: (1, H*W, C).
    """
    if tuple(src_shape) == tuple(hw_shape):
        return tokens
    grid = tokens.float().reshape(1, *src_shape, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(hw_shape), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)
