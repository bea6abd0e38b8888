"""Swin's (shifted) window softmax attention, used by Pola-Swin's 'S' stages."""
import functools
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from ..ops.eager import running_eagerly
from .patch_embed import padding_to_multiple

MASK_VALUE = -100.


def relative_position_index(window_size: int) -> Tensor:
    """(w*w, w*w) index into a ((2w-1)^2, heads) relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                        indexing='ij')).flatten(1)  # (2, w*w)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window_size - 1
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of the window -> (B * nW, w*w, C)."""
    batch, height, width, channels = x.shape
    rows, cols = height // window_size, width // window_size
    x = x.view(batch, rows, window_size, cols, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch * rows * cols, window_size * window_size,
                                               channels)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """(B * nW, w*w, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    channels = windows.shape[-1]
    rows, cols = height // window_size, width // window_size
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def cyclic_shift(x: Tensor, shift_h: int, shift_w: int) -> Tensor:
    """``torch.roll(x, (-shift_h, -shift_w), dims=(1, 2))`` of a (B, H, W, C) map, for shifts
    in [0, H] and [0, W]; while exporting to ONNX written as a gather, so that the shifts
    may be symbolic values of the graph."""
    if not torch.onnx.is_in_onnx_export():
        return torch.roll(x, (-shift_h, -shift_w), dims=(1, 2))
    for dim, shift in ((1, shift_h), (2, shift_w)):
        size = x.shape[dim]
        index = torch.arange(size, device=x.device) + shift
        x = x.index_select(dim, torch.where(index >= size, index - size, index))
    return x


class ShiftWindowAttention(nn.Module):
    """Multi-head softmax attention in (shifted) windows with a relative position bias.

    Parameters carry the official names (``qkv``, ``proj``,
    ``relative_position_bias_table``). Any (H, W) works: the map is padded to window
    multiples (padded keys are masked out, so outputs do not depend on the padding) and
    cropped back. As in the official code, a map no larger than the window in its
    smaller side is attended in windows of ``min(H, W, window_size)`` without shift; the
    bias of a smaller window uses the matching offsets of the table.

    While exporting to ONNX, the window is always ``window_size`` (the graph is exact for
    maps of at least a window in both sides), the shift is a tensor computed from the map
    size (:meth:`_exported_shift`), not a branch, and the map gets one more fully padded row
    and column of windows: torch.export specialises a graph on sizes of 1, and the traced
    map may be a single window (Pola-Swin's 7x7 last stage at 224). Those windows are
    masked and cropped, so the results are the same. The same code traces with the dynamo
    exporter (sizes are symbols) and the TorchScript one (sizes are traced 0-d tensors).

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads.
        window_size (int): window side w.
        shift (bool): shift windows by w // 2 (odd blocks of a stage).
        qkv_bias (bool): bias of the qkv projection.
        attn_drop (float): dropout on attention weights.
        proj_drop (float): dropout after ``proj``.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 shift: bool = False,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by {num_heads} heads')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift = shift
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))
        self.register_buffer(
            'relative_position_index', relative_position_index(window_size), persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def _relative_bias(self, window_size: int) -> Tensor:
        """(heads, w*w, w*w) bias for windows of side ``window_size`` <= the table's."""
        index = self.relative_position_index
        if window_size != self.window_size:
            offset = self.window_size - window_size
            rows = torch.arange(window_size, device=index.device) + offset
            # positions of the smaller window inside the table's window
            flat = (rows[:, None] * self.window_size + rows[None, :]).flatten()
            index = index[flat][:, flat]
        bias = self.relative_position_bias_table[index.flatten()]
        return bias.view(window_size**2, window_size**2, -1).permute(2, 0, 1)

    @staticmethod
    def _mask(padded_hw: Tuple[int, int], hw_shape: Tuple[int, int], window_size: int,
              shift_size: Union[int, Tensor], device: torch.device) -> Tensor:
        """(nW, w*w, w*w) additive mask separating shift regions and padding.

        Labels each row (and each column) of the map shifted by ``s <= H``: its region, 0 to
        2 from the bounds ``P - w`` and ``P - s`` (one region when ``s = 0``), and whether
        it is padding, which the shift moves from ``[H, P)`` to ``[H - s, P - s)``.
        Comparisons, not slicing, so that ``s`` may be a value of an exported graph (a
        0-d tensor).
        """
        def labels(padded: int, size: int) -> Tuple[Tensor, Tensor]:
            index = torch.arange(padded, device=device)
            region = (index >= padded - window_size).long() + (index >= padded - shift_size).long()
            return region, (index >= size - shift_size) & (index < padded - shift_size)

        rows, padded_rows = labels(padded_hw[0], hw_shape[0])
        cols, padded_cols = labels(padded_hw[1], hw_shape[1])
        padding = padded_rows[:, None] | padded_cols[None, :]
        grid = 3 * rows[:, None] + cols[None, :] + 9 * padding.long()
        windows = window_partition(grid[None, :, :, None], window_size)[..., 0]  # (nW, w*w)
        different = windows[:, :, None] != windows[:, None, :]
        return different.float() * MASK_VALUE

    def _exported_shift(self, height: int, width: int, device: torch.device) -> Tensor:
        """The shift of an exported graph, a 0-d int64 tensor: ``w // 2`` where both sides
        of the (H, W) map exceed the window ``w``, else 0.

        Tensor operations on the sizes, not a Python branch: the sizes are symbols under
        torch.export and traced 0-d tensors under the TorchScript exporter, and either way
        the graph computes the shift for every input size.
        """
        sides = [torch.scalar_tensor(side, dtype=torch.long, device=device)
                 for side in (height, width)]
        return torch.where(torch.minimum(*sides) > self.window_size, self.window_size // 2, 0)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """
        Args:
            x (Tensor): (B, N, C) tokens of an H x W grid in row-major order.
            hw_shape (tuple[int, int]): (H, W).

        Returns:
            Tensor: (B, N, C).
        """
        batch, num_tokens, channels = x.shape
        height, width = hw_shape
        exporting = torch.onnx.is_in_onnx_export()
        if exporting:  # one window size, one more padded row and column of windows, and
            # the shift (w // 2 unless the map fits in a window) a value, not a branch
            window_size, extra = self.window_size, self.window_size
            shift_size = self._exported_shift(height, width, x.device) if self.shift else 0
        else:
            window_size, extra = min(self.window_size, height, width), 0
            shift_size = self.window_size // 2 if self.shift and min(height, width) > \
                window_size else 0
        pad_h = padding_to_multiple(height, window_size) + extra
        pad_w = padding_to_multiple(width, window_size) + extra
        x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, pad_w, 0, pad_h))
        padded_hw = (height + pad_h, width + pad_w)
        shifted = exporting or shift_size > 0
        if shifted:
            x = cyclic_shift(x, shift_size, shift_size)
        mask = None
        if shifted or pad_h or pad_w:
            mask = (_cached_mask if running_eagerly() else self._mask)(
                padded_hw, hw_shape, window_size, shift_size, x.device)

        windows = window_partition(x, window_size)  # (B*nW, w*w, C)
        qkv = self.qkv(windows).reshape(*windows.shape[:2], 3, self.num_heads,
                                        channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B*nW, heads, w*w, d)
        attn = (q * (channels // self.num_heads)**-0.5) @ k.transpose(-2, -1)
        attn = attn + self._relative_bias(window_size)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(batch, num_windows, self.num_heads, window_size**2,
                             window_size**2) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(batch * num_windows, self.num_heads, window_size**2,
                             window_size**2)
        attn = self.attn_drop(attn.softmax(dim=-1))
        windows = (attn @ v).transpose(1, 2).reshape(*windows.shape[:2], channels)
        windows = self.proj_drop(self.proj(windows))

        x = window_reverse(windows, window_size, *padded_hw)
        if shifted:
            x = cyclic_shift(x, padded_hw[0] - shift_size, padded_hw[1] - shift_size)
        return x[:, :height, :width].reshape(batch, num_tokens, channels)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, shift={self.shift}')


@functools.lru_cache(maxsize=16)
def _cached_mask(padded_hw: Tuple[int, int], hw_shape: Tuple[int, int], window_size: int,
                 shift_size: int, device: torch.device) -> Tensor:
    """:meth:`ShiftWindowAttention._mask` of an eager call, built once per map size and
    shared by the blocks (about 20 small kernels a block otherwise); do not modify."""
    return ShiftWindowAttention._mask(padded_hw, hw_shape, window_size, shift_size, device)
