"""2-D rotary position tables of PolaFormer++ (row channels, then column channels).

For a head of ``n`` channels the ``n / 4`` frequencies are ``10000 ** -linspace(0, 1, n / 4)``
(both ends included: the first is 1, the last exactly 1e-4), each repeated for one channel
pair. A token at row ``r`` and column ``c`` has the phases ``[r * angle | c * angle]``: the
first ``n / 2`` channels carry its row, the last ``n / 2`` its column, positions counted from
0 at the top-left of the actual grid (no rescaling, any grid size). :func:`apply_rope`
rotates each channel pair ``(2i, 2i + 1)`` by its phase.

Since a row's phases do not depend on the column and a column's not on the row, the tables
factor into :class:`AxisTables`: (H, n / 2) for the rows and (W, n / 2) for the columns;
:func:`expand_axes` spreads them to the (H * W, n) per-token tables.
"""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor, nn

ROPE_BASE = 10000.


class AxisTables(NamedTuple):
    """cos and sin of the row phases (H, n / 2) and of the column phases (W, n / 2)."""
    row_cos: Tensor
    row_sin: Tensor
    col_cos: Tensor
    col_sin: Tensor

    @property
    def hw_shape(self) -> Tuple[int, int]:
        return self.row_cos.shape[0], self.col_cos.shape[0]

    def to(self, dtype: torch.dtype) -> 'AxisTables':
        return AxisTables(*(table.to(dtype) for table in self))


def rope_angles(channels: int, base: float = ROPE_BASE) -> Tensor:
    """(channels / 2,) float32 frequencies, each repeated for a channel pair; ``channels``
    must be a multiple of 4."""
    if channels % 4:
        raise ValueError(f'rotary tables need channels divisible by 4, got {channels}')
    theta = 1. / base**torch.linspace(0, 1, channels // 4)  # float32, as the authors'
    return theta.repeat_interleave(2)


def expand_axes(axes: AxisTables) -> Tuple[Tensor, Tensor]:
    """``(cos, sin)``, each (H * W, n), tokens row-major: row tables in the first n / 2
    channels, column tables in the last."""
    height, width = axes.hw_shape
    tables = []
    for rows, cols in ((axes.row_cos, axes.col_cos), (axes.row_sin, axes.col_sin)):
        half = rows.shape[-1]
        grid = torch.cat([rows[:, None].expand(height, width, half),
                          cols[None].expand(height, width, half)], dim=-1)
        tables.append(grid.reshape(height * width, 2 * half))
    return tables[0], tables[1]


class RotaryTable(nn.Module):
    """The rotary tables of one stage for heads of ``channels`` channels.

    Its ``angle`` buffer (the frequencies of :func:`rope_angles`) is persistent, so the
    authors' checkpoints, which store it, load key for key. The tables are computed in
    float32 whatever the module's dtype (positions above 2048 are not exact in fp16), in
    float64 for a float64 module; in a half module, whose buffer holds the frequencies
    rounded (up to 4e-4 relative in fp16: cosines off by up to 0.07 over 336 positions),
    from the exact float32 frequencies instead.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer('angle', rope_angles(channels))

    def axes(self, hw_shape: Tuple[int, int]) -> AxisTables:
        """(H, W) -> the row (H, channels / 2) and column (W, channels / 2) tables."""
        if self.angle.dtype in (torch.float32, torch.float64):
            angle = self.angle
        else:  # rounded by a cast of the module: the frequencies are fixed, recompute them
            angle = rope_angles(2 * self.angle.numel()).to(self.angle.device)
        dtype = angle.dtype
        tables = []
        for size in hw_shape:
            phase = torch.arange(size, device=angle.device, dtype=dtype)[:, None] * angle
            tables += [phase.cos(), phase.sin()]
        return AxisTables(*tables)

    def forward(self, hw_shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """(H, W) -> ``(cos, sin)``, each (H * W, channels), tokens row-major."""
        return expand_axes(self.axes(hw_shape))


def rotate_pairs(x: Tensor) -> Tensor:
    """``[-x1, x0, -x3, x2, ...]``: each channel pair turned by a quarter."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each channel pair of ``x`` (..., N, n) by the phases of the (N, n) tables."""
    return x * cos + rotate_pairs(x) * sin
