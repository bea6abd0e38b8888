"""Pola-PVT: Pyramid Vision Transformer (v1) with polarity-aware linear attention."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.token_grid import resize_token_grid
from ..registry import register_backbone
from ..variants import ARCHS, PVT
from .backbone_utils import (PolaBackbone, check_frozen_stages, check_image, check_in_channels,
                             check_out_indices, check_positive_int, parse_arch,
                             stochastic_depth_rates)
from .block import PreNormBlock
from .patch_embed import PatchEmbed
from .pola_attention import PolaLinearAttention

BLOCK_NORM_EPS = 1e-6  # the official blocks use 1e-6; patch embeds keep 1e-5


@register_backbone
class PolaPVT(PolaBackbone):
    """Pola-PVT backbone (PolaFormer, ICLR 2025) for detection, segmentation and
    classification.

    Four stages of patch embedding (patch 4, then 2, 2, 2), a learnable ``pos_embed{s}``
    (resized bilinearly from its square pretraining grid when the grid differs, as the
    official forward does) and blocks of polarity-aware linear attention over the whole
    stage map. Any input size works; outputs are (B, C_s, ceil(H / stride),
    ceil(W / stride)) without output norms, as mmdet's PVT v1.

    Parameter names follow the official checkpoints (``patch_embed{s}``, ``pos_embed{s}``,
    ``block{s}.{j}``, ``norm``), which load through
    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``. The official final ``norm`` is
    never used by the official classifier; it is kept for key parity, frozen
    (``requires_grad=False``, so DDP needs no ``find_unused_parameters``) and applied to
    the last output only with ``final_norm=True``.

    Precision: the attention core (:func:`pola_mm.ops.polarity_linear_attention`)
    computes its ``relu(x) ** p`` features (p up to 5, which overflow float16) and its
    sums in float32 with autocast disabled (the CUDA kernels read half inputs as they are
    and multiply in TF32); everything else follows autocast. bf16 and fp16 autocast
    therefore give finite outputs where a naive fp16 core gives inf. ``attn_impl``
    picks the core's implementation ('auto': Triton kernels on CUDA, PyTorch elsewhere).

    Args:
        arch (str | dict): 'tiny', 'small', 'medium', 'large', or a dict with
            ``embed_dims``, ``depths``, ``num_heads``, ``mlp_ratios`` (4 ints each) and
            optionally ``sr_ratios`` (4 ints, default all 1 as released).
        pretrain_img_size (int): image size of the pretraining (sets the grids of the
            positional tables: 56, 28, 14, 7 at 224).
        in_channels (int): input channels.
        qkv_bias (bool): bias of the attention projections.
        drop_rate (float): dropout after projections and positional embeddings.
        drop_path_rate (float): maximal stochastic depth, linearly increasing per block.
        out_indices (Sequence[int]): stages whose outputs are returned (0-3).
        frozen_stages (int): -1 freezes nothing, 0 the first patch embedding and its
            positional table (with its dropout), k also stages 1..k (their patch
            embeddings, positional tables and blocks; at 4 also ``norm``).
        final_norm (bool): apply the official ``norm`` to the last stage's output.
        with_cp (bool): activation checkpointing per block.
        attn_impl (str): implementation of the Pola attention core: 'auto' (fused Triton
            kernels on CUDA, PyTorch elsewhere), 'torch', 'triton' or 'reference' (the
            plain official math, for checks).
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=PATH)``.
    """

    arch_zoo: Dict[str, Dict] = ARCHS[PVT]
    num_stages = 4
    patch_sizes = (4, 2, 2, 2)

    def __init__(self,
                 arch: Union[str, Dict] = 'tiny',
                 pretrain_img_size: int = 224,
                 in_channels: int = 3,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 final_norm: bool = False,
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        arch = parse_arch(self.arch_zoo, arch,
                          per_stage=('embed_dims', 'depths', 'num_heads', 'mlp_ratios',
                                     'sr_ratios'),
                          scalars=(), optional=dict(sr_ratios=[1, 1, 1, 1]),
                          num_stages=self.num_stages)
        self.arch = arch
        self.num_features = list(arch['embed_dims'])
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        self.frozen_stages = check_frozen_stages(frozen_stages, self.num_stages)
        self.final_norm = final_norm
        check_positive_int('pretrain_img_size', pretrain_img_size, 32)

        block_rates = stochastic_depth_rates(drop_path_rate, arch['depths'])
        in_dims, grid = check_in_channels(in_channels), pretrain_img_size
        self.pos_grids = []  # pretraining grid side of each stage's pos_embed
        for s in range(self.num_stages):
            dims, depth = arch['embed_dims'][s], arch['depths'][s]
            grid //= self.patch_sizes[s]
            self.pos_grids.append(grid)
            sr_ratio = arch['sr_ratios'][s]
            if sr_ratio > grid:
                raise ValueError(f"malformed arch dict: sr_ratios {arch['sr_ratios']} reduce "
                                 f'the {grid}x{grid} token grid of stage {s + 1} at '
                                 f'pretrain_img_size {pretrain_img_size} to nothing')
            self.add_module(f'patch_embed{s + 1}', PatchEmbed(in_dims, dims, self.patch_sizes[s]))
            self.register_parameter(f'pos_embed{s + 1}',
                                    nn.Parameter(torch.zeros(1, grid * grid, dims)))
            self.add_module(f'pos_drop{s + 1}', nn.Dropout(drop_rate))
            first = sum(arch['depths'][:s])
            blocks = [
                PreNormBlock(
                    dims,
                    PolaLinearAttention(dims, arch['num_heads'][s], (grid // sr_ratio, ) * 2,
                                        'qg_kv', qkv_bias=qkv_bias, sr_ratio=sr_ratio,
                                        proj_drop=drop_rate, attn_impl=attn_impl),
                    arch['mlp_ratios'][s],
                    norm_eps=BLOCK_NORM_EPS, drop_rate=drop_rate,
                    drop_path_rate=block_rates[first + j], with_cp=with_cp)
                for j in range(depth)
            ]
            self.add_module(f'block{s + 1}', nn.ModuleList(blocks))
            in_dims = dims
        self.norm = nn.LayerNorm(in_dims, eps=BLOCK_NORM_EPS)
        self.norm.requires_grad_(final_norm)
        self._freeze_stages()

    def _stage(self, s: int):
        """(patch embed, pos_embed, its dropout, blocks) of stage ``s`` (0-based)."""
        return tuple(getattr(self, f'{name}{s + 1}')
                     for name in ('patch_embed', 'pos_embed', 'pos_drop', 'block'))

    def stem_parts(self) -> List[Union[nn.Module, nn.Parameter]]:
        return list(self._stage(0)[:3])

    def stage_parts(self, index: int) -> List[Union[nn.Module, nn.Parameter]]:
        patch_embed, pos_embed, pos_drop, blocks = self._stage(index)
        parts = [blocks] if index == 0 else [patch_embed, pos_embed, pos_drop, blocks]
        if index == self.num_stages - 1:
            parts.append(self.norm)
        return parts

    def _check_sr_grids(self, image_hw: Tuple[int, int]) -> None:
        """A ValueError naming ``sr_ratios`` when a stage's token grid, ceil(side / 2^(s+2)),
        is smaller than its key reduction (the strided conv ``sr`` would have no output)."""
        for s, sr_ratio in enumerate(self.arch['sr_ratios']):
            stride = 2**(s + 2)
            if min(-(-side // stride) for side in image_hw) < sr_ratio:
                raise ValueError(
                    f"image size {tuple(image_hw)} is too small for sr_ratios "
                    f"{self.arch['sr_ratios']}: stage {s + 1} reduces its keys {sr_ratio}-fold, "
                    f'which needs images of at least {(sr_ratio - 1) * stride + 1} pixels a side')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, C_in, H, W) -> tuple of (B, C_s, ceil(H / 2^(s+2)), ceil(W / 2^(s+2)))
        for s in ``out_indices``."""
        check_image(x, 32)
        self._check_sr_grids(x.shape[2:])
        outs = []
        for s in range(self.num_stages):
            patch_embed, pos_embed, pos_drop, blocks = self._stage(s)
            x, hw_shape = patch_embed(x)
            pos_grid = (self.pos_grids[s], ) * 2
            x = pos_drop(x + resize_token_grid(pos_embed, pos_grid, hw_shape, 'bilinear'))
            for block in blocks:
                x = block(x, hw_shape)
            if s == self.num_stages - 1 and self.final_norm:
                x = self.norm(x)
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw_shape)
            if s in self.out_indices:
                outs.append(x)
        return tuple(outs)
