"""The pre-norm transformer block both Pola backbones are made of."""
from typing import Tuple

import torch.utils.checkpoint as cp
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from .backbone_utils import mlp_hidden_dims


class PreNormBlock(nn.Module):
    """``x + DropPath(attn(norm1(x), hw))`` then ``x + DropPath(mlp(norm2(x)))``.

    Args:
        embed_dims (int): channels C.
        attn (nn.Module): token mixer called as ``attn(x, hw_shape)`` on (B, N, C).
        mlp_ratio (float): hidden channels of the MLP relative to C.
        norm_eps (float): LayerNorm epsilon (official: 1e-5 in Swin, 1e-6 in PVT).
        drop_rate (float): dropout inside the MLP.
        drop_path_rate (float): stochastic depth of this block.
        with_cp (bool): recompute the block in backward to save memory.
    """

    def __init__(self, embed_dims: int, attn: nn.Module, mlp_ratio: float,
                 norm_eps: float = 1e-5, drop_rate: float = 0., drop_path_rate: float = 0.,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = attn
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.mlp = Mlp(embed_dims, mlp_hidden_dims(embed_dims, mlp_ratio), drop=drop_rate)

    def _forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw_shape))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw_shape, use_reentrant=False)
        return self._forward(x, hw_shape)
