"""Polarity-aware linear attention (PolaFormer), the token mixer of the 'L' stages."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise_conv import HeadSharedDepthwiseConv2d
from ..ops.eager import running_eagerly
from ..ops.polarity_attention import check_attention_impl, polarity_linear_attention
from ..ops.token_grid import resize_token_grid

PROJECTIONS = ('qkvg', 'qg_kv')


class PolaLinearAttention(nn.Module):
    """Polarity-aware linear attention over one (H, W) token grid.

    The official models come in two projection layouts with the same math:
    ``'qkvg'`` (Pola-Swin: one Linear C -> 4C split into q, k, v, g) and ``'qg_kv'``
    (Pola-PVT: Linear ``qg`` C -> 2C for q, g and Linear ``kv`` C -> 2C for k, v, the
    latter optionally on a grid reduced by a strided conv ``sr`` + LayerNorm ``norm``).

    Forward: ``k += positional_encoding`` (resized bicubically from its pretraining
    grid to the key grid), q and k divided by ``softplus(scale)`` (inside the core),
    :func:`polarity_linear_attention` with ``power = 1 + alpha * sigmoid(power)`` (both
    activations applied by the core: inside the Triton kernels, no launches), plus a
    depthwise conv ``dwc`` on v (kernel ``kernel_size``, shared by all heads), times the
    gate g, then ``proj``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads h; ``C / h`` must be even.
        pos_grid (tuple[int, int]): the key grid (h, w) of pretraining;
            ``positional_encoding`` has shape (1, h*w, C) and is resized from it.
        projection (str): 'qkvg' or 'qg_kv'.
        qkv_bias (bool): bias of the q/k/v/g projections.
        sr_ratio (int): key/value spatial reduction ('qg_kv' only).
        alpha (float): the power lies in (1, 1 + alpha).
        kernel_size (int): kernel of the depthwise conv on v.
        proj_drop (float): dropout after ``proj``.
        attn_impl (str): implementation of the core: 'auto' (fused Triton kernels on
            CUDA, guarded, PyTorch elsewhere), 'torch', 'triton' or 'reference' (the plain
            official math, for checks); all compute the same function.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 pos_grid: Tuple[int, int],
                 projection: str = 'qkvg',
                 qkv_bias: bool = True,
                 sr_ratio: int = 1,
                 alpha: float = 4.,
                 kernel_size: int = 5,
                 proj_drop: float = 0.,
                 attn_impl: str = 'auto'):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f'projection must be one of {PROJECTIONS}, got {projection!r}')
        if embed_dims % num_heads or (embed_dims // num_heads) % 2:
            raise ValueError(f'embed_dims {embed_dims} must split into {num_heads} heads '
                             'of an even number of channels')
        if sr_ratio > 1 and projection != 'qg_kv':
            raise ValueError("sr_ratio > 1 needs projection='qg_kv'")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.projection = projection
        self.sr_ratio = sr_ratio
        self.alpha = alpha
        self.pos_grid = tuple(pos_grid)
        self.attn_impl = check_attention_impl(attn_impl)

        if projection == 'qkvg':
            self.qkvg = nn.Linear(embed_dims, 4 * embed_dims, bias=qkv_bias)
        else:
            self.qg = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
            if sr_ratio > 1:
                self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio, stride=sr_ratio)
                self.norm = nn.LayerNorm(embed_dims)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = HeadSharedDepthwiseConv2d(self.head_dims, kernel_size, num_heads)
        self.power = nn.Parameter(torch.zeros(1, num_heads, 1, self.head_dims))
        self.scale = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.positional_encoding = nn.Parameter(
            torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], embed_dims))
        # (table, (grid, version, device, dtype), resized): the eval cache of _positional_encoding
        self._pos_cache: Optional[Tuple[Tensor, tuple, Tensor]] = None

    def train(self, mode: bool = True):
        """Also drops the eval cache of the positional encoding: writes through ``.data``
        (MMEngine's ``EMAHook`` swapping in the averaged weights before its loops call
        ``eval()``) do not bump the table's version, which the cache is keyed on."""
        self._pos_cache = None
        return super().train(mode)

    def _positional_encoding(self, hw_shape: Tuple[int, int]) -> Tensor:
        """(1, H*W, C) positional encoding for a key grid; cached for the last size in eval
        (not while tracing, :func:`~pola_mm.ops.eager.running_eagerly`: exporting to
        ONNX, the grid is symbolic and the resize is in the graph), and dropped when the
        table changes in place or is replaced (``load_state_dict``, with ``assign=True``
        too) or the module is switched to train or eval mode."""
        table = self.positional_encoding
        if self.training or torch.is_grad_enabled() or not running_eagerly():
            return resize_token_grid(table, self.pos_grid, hw_shape, 'bicubic')
        key = (hw_shape, table._version, table.device, table.dtype)
        if self._pos_cache is None or self._pos_cache[0] is not table or \
                self._pos_cache[1] != key:
            self._pos_cache = (table, key,
                               resize_token_grid(table, self.pos_grid, hw_shape, 'bicubic'))
        return self._pos_cache[2]

    def _project(self, x: Tensor, hw_shape: Tuple[int, int]):
        """(B, N, C) -> q, g (B, N, C); k, v (B, n, C); key grid (h_k, w_k)."""
        if self.projection == 'qkvg':
            q, k, v, g = self.qkvg(x).chunk(4, dim=-1)
            return q, k, v, g, hw_shape
        q, g = self.qg(x).chunk(2, dim=-1)
        kv_hw = hw_shape
        if self.sr_ratio > 1:
            batch, _, channels = x.shape
            x = x.transpose(1, 2).reshape(batch, channels, *hw_shape)
            x = self.sr(x)
            kv_hw = tuple(x.shape[2:])
            x = self.norm(x.flatten(2).transpose(1, 2))
        k, v = self.kv(x).chunk(2, dim=-1)
        return q, k, v, g, kv_hw

    def _local_mixing(self, v: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """The depthwise conv ``dwc`` (kernel shared by the heads) on the values of every
        head, (B, n, C) -> (B, N, C).

        Applied to the channels-last (B, C, H, W) view of v, whose output is (B, N, C)
        again without a copy. With reduced keys, v is first interpolated linearly over the
        flattened tokens to the query count (as the official code)."""
        batch, _, channels = v.shape
        height, width = hw_shape
        if self.sr_ratio > 1:
            v = F.interpolate(v.transpose(1, 2), size=height * width, mode='linear')
            v = v.reshape(batch, channels, height, width)
        else:
            v = v.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.dwc(v).permute(0, 2, 3, 1).reshape(batch, height * width, channels)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """
        Args:
            x (Tensor): (B, N, C) tokens of an H x W grid in row-major order.
            hw_shape (tuple[int, int]): (H, W), with H * W == N.

        Returns:
            Tensor: (B, N, C).
        """
        batch, num_tokens, channels = x.shape
        height, width = hw_shape
        if height * width != num_tokens:
            raise ValueError(f'{num_tokens} tokens do not form the grid {height}x{width}')
        q, k, v, g, kv_hw = self._project(x, hw_shape)
        k = k + self._positional_encoding(kv_hw)

        def heads(t: Tensor) -> Tensor:  # (B, L, C) -> (B, h, L, d)
            return t.reshape(*t.shape[:2], self.num_heads, self.head_dims).transpose(1, 2)

        # the core applies the activations of power and scale (inside the Triton kernels)
        out = polarity_linear_attention(heads(q), heads(k), heads(v), self.power,
                                        impl=self.attn_impl, scale=heads(self.scale),
                                        alpha=self.alpha)
        out = out.transpose(1, 2).reshape(batch, num_tokens, channels)
        # out of place: adding in place to the conv output's view costs autograd copies of
        # the whole map in backward
        out = (self._local_mixing(v, hw_shape) + out).mul(g)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'projection={self.projection!r}, sr_ratio={self.sr_ratio}, '
                f'alpha={self.alpha}, attn_impl={self.attn_impl!r}')
