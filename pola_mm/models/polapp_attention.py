"""The two token mixers of PolaFormer++: polarity-aware linear attention (stages 0-1) and
global softmax attention with 2-D rotary positions (stages 2-3).

Both read and write (B, C, H, W) maps, project with one Linear C -> 4C split into four
C-channel parts, add a depthwise 5x5 conv of the values (``lepe``) to the attention
output, multiply by the fourth part (a plain linear gate) and project with ``proj``.
Parameter names are the authors' (``qkvg`` / ``qkvo``, ``lepe``, ``proj``, ``s1``,
``s2``).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.depthwise_conv import DepthwiseConv2d
from ..ops.polapp_linear import check_polapp_attention_impl, polapp_linear_attention
from ..ops.rope import AxisTables, apply_rope

LEPE_KERNEL = 5


def _check_heads(embed_dims: int, num_heads: int) -> int:
    """Head dims of ``embed_dims`` over ``num_heads``; ValueError unless a multiple of 4."""
    if embed_dims % num_heads or (embed_dims // num_heads) % 4:
        raise ValueError(f'embed_dims {embed_dims} must split into {num_heads} heads of a '
                         'multiple of 4 channels (rotary pairs in row and column halves)')
    return embed_dims // num_heads


class _GatedAttention(nn.Module):
    """Projections shared by both mixers: ``qkv{gate_name}``, ``lepe`` (its kernel
    gradient compiled on CPU for large maps if ``fused_grad``) and ``proj``."""

    gate_name = ''

    def __init__(self, embed_dims: int, num_heads: int, fused_grad: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dims = _check_heads(embed_dims, num_heads)
        self.add_module(f'qkv{self.gate_name}', nn.Linear(embed_dims, 4 * embed_dims))
        self.lepe = DepthwiseConv2d(embed_dims, LEPE_KERNEL, fused_grad)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def _project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(B, C, H, W) -> q, k, v as (B, h, N, d) views, the gate (B, N, C) and
        ``lepe(v)`` as (B, N, C)."""
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C) view of the map
        projection = getattr(self, f'qkv{self.gate_name}')
        # four products, one per part: each part comes out dense, and backward adds four
        # (B, N, C) gradients instead of concatenating strided ones; batched products read
        # the transposed map in place whatever B
        q, k, v, gate = (torch.baddbmm(bias, tokens, weight.t().expand(batch, -1, -1))
                         for weight, bias in zip(projection.weight.chunk(4),
                                                 projection.bias.chunk(4)))
        # (B, C, H, W) channels-last views of the (B, N, C) tokens, in and out: no copy,
        # and oneDNN convolves channels-last maps directly (transpose-reshape views would
        # do the same only for B > 1: at B = 1 their batch stride is not channels-last's)
        lepe = self.lepe(v.view(batch, height, width, channels).permute(0, 3, 1, 2))
        # reshape, not unflatten: the TorchScript ONNX exporter fixes the token count of
        # an unflatten's output, and with it the 1 / N of the linear attention
        heads = [t.reshape(batch, height * width, self.num_heads, self.head_dims)
                 .transpose(1, 2) for t in (q, k, v)]
        return (*heads, gate, lepe.permute(0, 2, 3, 1).reshape(batch, height * width, channels))

    def _output(self, attended: Tensor, gate: Tensor, lepe: Tensor,
                hw_shape: Tuple[int, int]) -> Tensor:
        """(B, h, N, d) attention output -> ``proj((out + lepe) * gate)`` as (B, C, H, W)."""
        out = attended.transpose(1, 2).flatten(2)  # (B, N, C)
        out = self.proj((out + lepe) * gate)
        batch, _, channels = out.shape
        return out.view(batch, *hw_shape, channels).permute(0, 3, 1, 2)


class PolaPPLinearAttention(_GatedAttention):
    """Polarity-aware linear attention of PolaFormer++ over the whole (H, W) map.

    q, k, v, g = ``qkvg(x)``; the core
    (:func:`~pola_mm.ops.polapp_linear.polapp_linear_attention`) takes the stream
    temperatures ``sigmoid(s1)``, ``sigmoid(s2)`` (parameters (1, h, 1, 2d), zero at
    initialisation) and the row and column tables of the stage's 2d-channel rotary
    positions.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads h; C / h must be a multiple of 4.
        attn_impl (str): the core's implementation: 'auto' (the lean PyTorch path, its
            elementwise steps and ``lepe``'s kernel gradient compiled on CPU for large
            maps), 'torch' (the lean path, eager) or 'reference' (the plain form, for
            checks).
    """

    gate_name = 'g'

    def __init__(self, embed_dims: int, num_heads: int, attn_impl: str = 'auto'):
        attn_impl = check_polapp_attention_impl(attn_impl)
        super().__init__(embed_dims, num_heads, fused_grad=attn_impl == 'auto')
        self.attn_impl = attn_impl
        self.s1 = nn.Parameter(torch.zeros(1, num_heads, 1, 2 * self.head_dims))
        self.s2 = nn.Parameter(torch.zeros(1, num_heads, 1, 2 * self.head_dims))

    def forward(self, x: Tensor, rope: AxisTables) -> Tensor:
        """(B, C, H, W) map and the (H, 2d) row and (W, 2d) column rotary tables ->
        (B, C, H, W)."""
        q, k, v, gate, lepe = self._project(x)
        out = polapp_linear_attention(q, k, v, torch.sigmoid(self.s1), torch.sigmoid(self.s2),
                                      rope, impl=self.attn_impl)
        return self._output(out, gate, lepe, x.shape[2:])


class RoPESoftmaxAttention(_GatedAttention):
    """Global softmax attention over the whole (H, W) map with rotary q and k.

    q, k, v, o = ``qkvo(x)``; ``softmax(R(q) R(k)^T / sqrt(d)) v`` through
    :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
    kernels on GPU, no N x N map kept on CPU either; exported ONNX graphs spell it out, for
    opsets before 14), then ``proj((out + lepe(v)) * o)``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads h; C / h must be a multiple of 4.
    """

    gate_name = 'o'

    def forward(self, x: Tensor, rope: Tuple[Tensor, Tensor]) -> Tensor:
        """(B, C, H, W) map and (H*W, d) ``(cos, sin)`` tables -> (B, C, H, W)."""
        q, k, v, gate, lepe = self._project(x)
        cos, sin = (t.to(q.dtype) for t in rope)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if torch.onnx.is_in_onnx_export():  # the fused operator needs ONNX opset 14
            out = torch.softmax(q @ k.transpose(-2, -1) * self.head_dims**-0.5, dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self._output(out, gate, lepe, x.shape[2:])
