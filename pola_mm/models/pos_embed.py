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


def resize_token_grid(tokens: Tensor, hw_shape: Tuple[int, int], mode: str) -> Tensor:
    """Resize a (1, S*S, C) table of row-major tokens to an (H, W) grid.

    Interpolates in float32 with ``align_corners=False`` and returns the input dtype.
    A table that already has the target size is returned unchanged (bit-exact).

    Args:
        tokens (Tensor): (1, S*S, C) table.
        hw_shape (tuple[int, int]): target grid (H, W).
        mode (str): 'bicubic' or 'bilinear'.

    Returns:
        Tensor: (1, H*W, C).
    """
    side = square_grid_side(tokens.shape[1])
    height, width = hw_shape
    if (side, side) == (height, width):
        return tokens
    grid = tokens.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)
