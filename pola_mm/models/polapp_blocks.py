"""Building blocks of PolaFormer++: the convolutional stem, the downsampling, the block
(conditional position conv, attention, conv FFN, layer scale) and the stage.

Module names are the authors' (``patch_embed.proj.{0..10}``, ``layers.{i}.blocks.{j}``,
``norm1.norm``, ``ffn.dwconv``, ``gamma_1``, ``layers.{i}.downsample.{reduction,norm}``,
``layers.{i}.RoPE`` / ``RoPE_linear``), so their checkpoints load without renaming.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from timm.layers import DropPath
from torch import Tensor, nn

from ..ops.depthwise_conv import DepthwiseConv2d
from ..ops.rope import AxisTables, RotaryTable
from .backbone_utils import mlp_hidden_dims
from .polapp_attention import PolaPPLinearAttention, RoPESoftmaxAttention

LN_EPS = 1e-6  # every LayerNorm of the authors' model; BatchNorms keep PyTorch's 1e-5
STEM_CONVS = 4


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (the parameters live in
    ``.norm``, as in the authors' checkpoints)."""

    def __init__(self, channels: int, eps: float = LN_EPS):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """Four 3x3 convs (strides 2, 1, 1, 2) with norms, GELU after the first three: (B,
    C_in, H, W) -> (B, C, ceil(H / 4), ceil(W / 4)). ``proj`` holds them as the authors'
    ``nn.Sequential`` (convs at 0, 3, 6, 9, norms at 1, 4, 7, 10)."""

    def __init__(self, in_channels: int, embed_dims: int, norm_cfg: Dict):
        super().__init__()
        hidden = embed_dims // 2
        layers: List[nn.Module] = []
        widths = [in_channels] + [hidden] * (STEM_CONVS - 1) + [embed_dims]
        for index in range(STEM_CONVS):
            stride = 2 if index in (0, STEM_CONVS - 1) else 1
            layers += [nn.Conv2d(widths[index], widths[index + 1], 3, stride, 1),
                       build_norm_layer(norm_cfg, widths[index + 1])[1]]
            if index < STEM_CONVS - 1:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv with stride 2 and a norm: (B, C, H, W) -> (B, C', ceil(H/2), ceil(W/2))."""

    def __init__(self, in_dims: int, out_dims: int, norm_cfg: Dict):
        super().__init__()
        self.reduction = nn.Conv2d(in_dims, out_dims, 3, 2, 1)
        self.norm = build_norm_layer(norm_cfg, out_dims)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x))


class ConvFFN(nn.Module):
    """``fc2(u + dwconv(u))`` with ``u = GELU(fc1(x))`` and a depthwise 3x3 ``dwconv``
    (its kernel gradient compiled on CPU for large maps if ``fused_grad``):
    (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, embed_dims: int, hidden_dims: int, fused_grad: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.dwconv = DepthwiseConv2d(hidden_dims, 3, fused_grad)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(self.fc1(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        hidden = hidden + self.dwconv(hidden)
        return self.fc2(hidden.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PolaPPBlock(nn.Module):
    """``x + pos(x)``, then ``x + DropPath(gamma_1 * attn(norm1(x)))`` and
    ``x + DropPath(gamma_2 * ffn(norm2(x)))`` on (B, C, H, W) maps.

    Args:
        embed_dims (int): channels C.
        num_heads (int): attention heads.
        linear (bool): polarity-aware linear attention (else global softmax attention).
        mlp_ratio (float): FFN hidden channels ``int(mlp_ratio * C)``.
        layer_scale_init (float): initial value of ``gamma_1`` and ``gamma_2``.
        drop_path_rate (float): stochastic depth of this block.
        with_cp (bool): recompute the block in backward to save memory.
        attn_impl (str): core of the linear attention ('auto', 'torch', 'reference');
            with 'auto', the kernel gradients of the depthwise convolutions (``pos``, the
            FFN's and the linear attention's ``lepe``) are compiled on CPU for large maps.
    """

    def __init__(self, embed_dims: int, num_heads: int, linear: bool, mlp_ratio: float,
                 layer_scale_init: float, drop_path_rate: float = 0., with_cp: bool = False,
                 attn_impl: str = 'auto'):
        super().__init__()
        self.linear = linear
        self.with_cp = with_cp
        fused_grad = attn_impl == 'auto'
        self.pos = DepthwiseConv2d(embed_dims, 3, fused_grad)
        self.norm1 = ChannelLayerNorm(embed_dims)
        self.attn = (PolaPPLinearAttention(embed_dims, num_heads, attn_impl) if linear else
                     RoPESoftmaxAttention(embed_dims, num_heads))
        self.norm2 = ChannelLayerNorm(embed_dims)
        self.ffn = ConvFFN(embed_dims, mlp_hidden_dims(embed_dims, mlp_ratio), fused_grad)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.gamma_1 = nn.Parameter(torch.full((1, embed_dims, 1, 1), float(layer_scale_init)))
        self.gamma_2 = nn.Parameter(torch.full((1, embed_dims, 1, 1), float(layer_scale_init)))

    def _forward(self, x: Tensor, rope: Union[AxisTables, Tuple[Tensor, Tensor]]) -> Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x), rope))
        return x + self.drop_path(self.gamma_2 * self.ffn(self.norm2(x)))

    def forward(self, x: Tensor, rope: Union[AxisTables, Tuple[Tensor, Tensor]]) -> Tensor:
        """(B, C, H, W) map and the stage's rotary tables for this block's attention ->
        (B, C, H, W)."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, rope, use_reentrant=False)
        return self._forward(x, rope)


class PolaPPStage(nn.Module):
    """The blocks of one stage and the downsampling after it.

    ``RoPE`` (d channels, softmax blocks) and ``RoPE_linear`` (2d channels, linear
    blocks) hold the frequencies; the tables are built once per forward for the actual
    grid: per token for the softmax blocks, per row and per column for the linear ones.
    Returns the stage output and the downsampled map (None for the last stage).
    """

    def __init__(self, blocks: List[PolaPPBlock], head_dims: int,
                 downsample: Optional[Downsample]):
        super().__init__()
        self.RoPE = RotaryTable(head_dims)
        self.RoPE_linear = RotaryTable(2 * head_dims)
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, C, H, W) -> ((B, C, H, W), (B, C', ceil(H/2), ceil(W/2)) or None)."""
        hw_shape = tuple(x.shape[2:])
        tables = {linear: self.RoPE_linear.axes(hw_shape) if linear else self.RoPE(hw_shape)
                  for linear in {block.linear for block in self.blocks}}
        for block in self.blocks:
            x = block(x, tables[block.linear])
        return x, None if self.downsample is None else self.downsample(x)
