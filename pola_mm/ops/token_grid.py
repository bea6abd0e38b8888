"""Resizing of learnable positional tables stored as square token grids."""
import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .eager import running_eagerly

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


def square_grid_side(num_tokens: int) -> Optional[int]:
    """Side S of a square S x S grid of ``num_tokens`` tokens, None when they form none."""
    side = math.isqrt(num_tokens)
    return side if side * side == num_tokens else None


def resize_token_grid(tokens: Tensor, src_shape: Tuple[int, int], hw_shape: Tuple[int, int],
                      mode: str) -> Tensor:
    """Resize a (1, h*w, C) table of row-major tokens from its (h, w) grid to (H, W).

    Interpolates in float32 with ``align_corners=False`` and returns the input dtype.
    A table that already has the target size is returned unchanged (bit-exact). When the
    bicubic resize needs a gradient (training), it runs as two small matrix products
    (:func:`_separable_bicubic`), whose backward is dense too, instead of
    ``F.interpolate``, whose backward scatters (atomics on CUDA). While a model is
    exported to ONNX, the table is always interpolated with ``F.interpolate`` (a Resize
    node), so that the graph resizes it for every input size (at the same size the
    interpolation is an identity).

    Args:
        tokens (Tensor): (1, h*w, C) table.
        src_shape (tuple[int, int]): the table's grid (h, w).
        hw_shape (tuple[int, int]): target grid (H, W).
        mode (str): 'bicubic' or 'bilinear'.

    Returns:
        Tensor: (1, H*W, C).
    """
    exporting = torch.onnx.is_in_onnx_export()
    if not exporting and tuple(src_shape) == tuple(hw_shape):
        return tokens
    if mode == 'bicubic' and tokens.requires_grad and torch.is_grad_enabled() and not exporting:
        return _separable_bicubic(tokens, src_shape, hw_shape)
    grid = tokens.float().reshape(1, *src_shape, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(hw_shape), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(src: int, dst: int, device: torch.device) -> Tensor:
    """(dst, src) float32 matrix ``M`` such that ``M @ x`` resizes x (src, ...) along its
    first dim exactly as ``F.interpolate(mode='bicubic', align_corners=False)`` does:
    source position ``(i + 0.5) * src / dst - 0.5``, four taps with coefficient
    ``CUBIC_A``, indices clamped at the borders. Built in float64; cached (do not modify;
    call ``bicubic_matrix.__wrapped__`` where :func:`.running_eagerly` is False).
    """
    position = (torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5
    first = position.floor()
    t = position - first

    def near(x):  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)  # (dst, 4)
    taps = (first.long()[:, None] + torch.arange(-1, 3)).clamp_(0, src - 1)
    matrix = torch.zeros(dst, src, dtype=torch.float64)
    matrix.scatter_add_(1, taps, weights)
    return matrix.to(device=device, dtype=torch.float32)


def _separable_bicubic(tokens: Tensor, src_shape: Tuple[int, int],
                       hw_shape: Tuple[int, int]) -> Tensor:
    """:func:`resize_token_grid` in bicubic mode as ``rows @ grid @ cols^T`` in float32:
    (1, h*w, C) -> (1, H*W, C)."""
    (src_h, src_w), (height, width) = src_shape, hw_shape
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        grid = tokens.float().reshape(src_h, src_w, -1)
        matrix = bicubic_matrix if running_eagerly() else bicubic_matrix.__wrapped__
        grid = matrix(src_w, width, tokens.device) @ grid  # (h, W, C)
        grid = matrix(src_h, height, tokens.device) @ grid.flatten(1)  # (H, W*C)
    return grid.reshape(1, height * width, -1).to(tokens.dtype)
