"""2-D rotary position tables of PolaFormer++ (row channels, then column channels).

For a head of ``n`` channels the ``n / 4`` frequencies are ``10000 ** -linspace(0, 1, n / 4)``
(both ends included: the first is 1, the last exactly 1e-4), each repeated for one channel
pair. A token at row ``r`` and column ``c`` has the phases ``[r * angle | c * angle]``: the
first ``n / 2`` channels carry its row, the last ``n / 2`` its column, positions counted from
0 at the top-left of the actual grid (no rescaling, any grid size). :func:`apply_rope`
rotates each channel pair ``(2i, 2i + 1)`` by its phase.
"""
from typing import Tuple

import torch
from torch import Tensor, nn

ROPE_BASE = 10000.


def rope_angles(channels: int, base: float = ROPE_BASE) -> Tensor:
    """(channels / 2,) float32 frequencies, each repeated for a channel pair; ``channels``
    must be a multiple of 4."""
    if channels % 4:
        raise ValueError(f'rotary tables need channels divisible by 4, got {channels}')
    theta = 1. / base**torch.linspace(0, 1, channels // 4)  # float32, as the authors'
    return theta.repeat_interleave(2)


class RotaryTable(nn.Module):
    """The rotary tables of one stage for heads of ``channels`` channels.

    Its ``angle`` buffer (the frequencies of :func:`rope_angles`) is persistent, so the
    authors' checkpoints, which store it, load key for key; the tables are built from it
    in float32 whatever the module's dtype (positions above 2048 are not exact in fp16),
    in float64 for a float64 module.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer('angle', rope_angles(channels))

    def forward(self, hw_shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """(H, W) -> ``(cos, sin)``, each (H * W, channels), tokens row-major."""
        height, width = hw_shape
        dtype = torch.float64 if self.angle.dtype == torch.float64 else torch.float32
        angle = self.angle.to(dtype)
        rows, cols = torch.meshgrid(torch.arange(height, device=angle.device, dtype=dtype),
                                    torch.arange(width, device=angle.device, dtype=dtype),
                                    indexing='ij')
        phase = torch.cat([rows.reshape(-1, 1) * angle, cols.reshape(-1, 1) * angle], dim=-1)
        return phase.cos(), phase.sin()


def rotate_pairs(x: Tensor) -> Tensor:
    """``[-x1, x0, -x3, x2, ...]``: each channel pair turned by a quarter."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each channel pair of ``x`` (..., N, n) by the phases of the (N, n) tables."""
    return x * cos + rotate_pairs(x) * sin
