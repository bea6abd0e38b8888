"""Pola-Swin: Swin Transformer with polarity-aware linear attention in its 'L' stages."""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_backbone
from ..variants import ARCHS, SWIN
from .backbone_utils import (PolaBackbone, check_frozen_stages, check_image, check_in_channels,
                             check_out_indices, check_positive_int, parse_arch,
                             stochastic_depth_rates)
from .block import PreNormBlock
from .patch_embed import PatchEmbed, padding_to_multiple
from .pola_attention import PolaLinearAttention
from .window_attention import ShiftWindowAttention


class PatchMerging(nn.Module):
    """2x2 patch merging in the official channel order, for any (H, W).

    Concatenates the neighbours (row 0, col 0), (row 1, col 0), (row 0, col 1),
    (row 1, col 1) of each 2x2 cell (odd sizes are zero-padded), then LayerNorm(4C) and
    Linear(4C, 2C, no bias): (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C).
    """

    def __init__(self, embed_dims: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * embed_dims)
        self.reduction = nn.Linear(4 * embed_dims, 2 * embed_dims, bias=False)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        batch, _, channels = x.shape
        height, width = hw_shape
        x = x.view(batch, height, width, channels)
        x = F.pad(x, (0, 0, 0, padding_to_multiple(width, 2), 0, padding_to_multiple(height, 2)))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        hw_shape = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.flatten(1, 2))), hw_shape


class PolaSwinStage(nn.Module):
    """Blocks of one stage, then (except the last stage) a :class:`PatchMerging`."""

    def __init__(self, blocks: List[PreNormBlock], downsample: Optional[PatchMerging]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        """Returns the stage output (B, H*W, C) and the next stage's input and grid."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, x, hw_shape
        x_down, down_hw = self.downsample(x, hw_shape)
        return x, x_down, down_hw


@register_backbone
class PolaSwinTransformer(PolaBackbone):
    """Pola-Swin backbone (PolaFormer, ICLR 2025) for detection, segmentation and
    classification.

    Stages whose ``attn_types`` letter is 'L' use polarity-aware linear attention over
    the whole stage map (as the released models were trained at 224: 56x56 and 28x28
    windows cover the map), with the positional encoding resized bicubically from its
    pretraining grid to the map. 'S' stages use Swin's shifted-window softmax attention.
    Any input size works; outputs are cropped to ceil(H / stride) x ceil(W / stride).

    Parameter names follow the official checkpoints, which load through
    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (see
    :mod:`pola_mm.checkpoint`). Each output goes through a LayerNorm ``norm{i}``; the
    official final ``norm`` initialises the last stage's.

    Precision: the attention core (:func:`pola_mm.ops.polarity_linear_attention`)
    computes its ``relu(x) ** p`` features (p up to 5, which overflow float16) and its
    sums in float32 with autocast disabled (the CUDA kernels read half inputs as they are
    and multiply in TF32); everything else follows autocast. bf16 and fp16 autocast
    therefore give finite outputs where a naive fp16 core gives inf. ``attn_impl``
    picks the core's implementation ('auto': Triton kernels on CUDA, PyTorch elsewhere).

    Args:
        arch (str | dict): 'tiny', 'small', 'base', or a dict with ``embed_dims`` (int),
            ``depths`` and ``num_heads`` (4 ints each) and optionally ``attn_types``
            (4 letters of 'L'/'S', default 'LLSS').
        pretrain_img_size (int): image size of the pretraining (224, or 384 for the
            Pola-Swin-B-384 weights); sets the Pola positional-encoding grids.
        in_channels (int): input channels.
        patch_size (int): side of the patch embedding.
        window_size (int): window of the 'S' stages (7; 12 for the 384 weights).
        mlp_ratio (float): MLP hidden ratio.
        qkv_bias (bool): bias of the attention projections.
        drop_rate (float): dropout after projections.
        attn_drop_rate (float): dropout on softmax attention weights.
        drop_path_rate (float): maximal stochastic depth, linearly increasing per block.
        out_indices (Sequence[int]): stages whose outputs are returned (0-3).
        frozen_stages (int): -1 freezes nothing, 0 the patch embedding, k the patch
            embedding and stages 1..k (their blocks, patch merging and output norm).
        with_cp (bool): activation checkpointing per block.
        attn_impl (str): implementation of the Pola attention core: 'auto' (fused Triton
            kernels on CUDA, PyTorch elsewhere), 'torch', 'triton' or 'reference' (the
            plain official math, for checks).
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=PATH)``.
    """

    arch_zoo: Dict[str, Dict] = ARCHS[SWIN]
    num_stages = 4
    new_key_prefixes = ('norm0.', 'norm1.', 'norm2.')  # the official model has one norm

    def __init__(self,
                 arch: Union[str, Dict] = 'tiny',
                 pretrain_img_size: int = 224,
                 in_channels: int = 3,
                 patch_size: int = 4,
                 window_size: int = 7,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.2,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        arch = parse_arch(self.arch_zoo, arch, per_stage=('depths', 'num_heads'),
                          scalars=('embed_dims', ), optional=dict(attn_types='LLSS'),
                          num_stages=self.num_stages)
        attn_types = arch['attn_types']
        if (not isinstance(attn_types, str) or len(attn_types) != self.num_stages
                or set(attn_types) - set('LS')):
            raise ValueError(f"malformed arch dict: attn_types must be {self.num_stages} "
                             f"letters of 'L'/'S', got {attn_types!r}")
        self.arch = arch
        embed_dims = arch['embed_dims']
        self.num_features = [embed_dims * 2**i for i in range(self.num_stages)]
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        self.frozen_stages = check_frozen_stages(frozen_stages, self.num_stages)
        check_positive_int('patch_size', patch_size)
        check_positive_int('window_size', window_size)
        check_positive_int('pretrain_img_size', pretrain_img_size, patch_size * 8)

        self.patch_embed = PatchEmbed(check_in_channels(in_channels), embed_dims, patch_size)
        block_rates = stochastic_depth_rates(drop_path_rate, arch['depths'])
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(arch['depths'], arch['num_heads'])):
            channels = self.num_features[i]
            grid = pretrain_img_size // patch_size // 2**i
            first = sum(arch['depths'][:i])
            blocks = []
            for j in range(depth):
                if arch['attn_types'][i] == 'L':
                    attn = PolaLinearAttention(channels, heads, (grid, grid), 'qkvg',
                                               qkv_bias=qkv_bias, proj_drop=drop_rate,
                                               attn_impl=attn_impl)
                else:
                    attn = ShiftWindowAttention(channels, heads, window_size, shift=j % 2 == 1,
                                                qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                                proj_drop=drop_rate)
                blocks.append(
                    PreNormBlock(channels, attn, mlp_ratio, drop_rate=drop_rate,
                                 drop_path_rate=block_rates[first + j], with_cp=with_cp))
            downsample = PatchMerging(channels) if i < self.num_stages - 1 else None
            self.layers.append(PolaSwinStage(blocks, downsample))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    def stem_parts(self) -> List[nn.Module]:
        return [self.patch_embed]

    def stage_parts(self, index: int) -> List[nn.Module]:
        parts = [self.layers[index]]
        if index in self.out_indices:
            parts.append(getattr(self, f'norm{index}'))
        return parts

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor],
                                    report: Optional[Dict[str, List[str]]] = None
                                    ) -> Dict[str, Tensor]:
        """Official Pola-Swin names -> these: the final ``norm`` becomes the last stage's
        output norm ``norm3`` (dropped when stage 3 is not an output)."""
        report = {} if report is None else report
        converted = {}
        for key, value in state_dict.items():
            if key.startswith('norm.'):
                if not hasattr(self, 'norm3'):
                    report.setdefault('dropped', []).append(key)
                    continue
                new_key = 'norm3.' + key[len('norm.'):]
                report.setdefault('converted', []).append(f'{key} -> {new_key}')
                key = new_key
            converted[key] = value
        return converted

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, C_in, H, W) -> tuple of (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2)))
        for i in ``out_indices``."""
        check_image(x, self.patch_embed.patch_size * 2**(self.num_stages - 1))
        x, hw_shape = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, next_hw = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], *hw_shape))
            hw_shape = next_hw
        return tuple(outs)
