"""Non-overlapping patch embedding that accepts any input size."""
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn


def padding_to_multiple(size: int, multiple: int) -> int:
    """Padding that takes ``size`` to the next multiple of ``multiple`` (0 if it is one).

    Written as a ceil division, not ``-size % multiple``: while a model is exported to
    ONNX its sizes are symbols, and the modulo form doubles the length of the symbolic
    sizes at every stage (export time grows with them).
    """
    return (size + multiple - 1) // multiple * multiple - size


class PatchEmbed(nn.Module):
    """Conv patch embedding (kernel = stride = patch size) followed by a LayerNorm.

    The input is zero-padded on the right/bottom to a multiple of the patch size, so an
    (H, W) input gives a (ceil(H / p), ceil(W / p)) grid.

    Args:
        in_channels (int): input channels.
        embed_dims (int): output channels.
        patch_size (int): patch side p.
        norm_eps (float): LayerNorm epsilon.
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims, eps=norm_eps)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """(B, C_in, H, W) -> tokens (B, H'*W', C) and their grid (H', W')."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'expected a (B, {self.in_channels}, H, W) input, '
                             f'got shape {tuple(x.shape)}')
        pad_h = padding_to_multiple(x.shape[2], self.patch_size)
        pad_w = padding_to_multiple(x.shape[3], self.patch_size)
        x = F.pad(x, (0, pad_w, 0, pad_h))  # unconditional: an exported graph pads any size
        x = self.proj(x)
        hw_shape = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw_shape
