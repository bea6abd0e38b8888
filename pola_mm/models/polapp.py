"""PolaFormer++ (PolaPP b0-b5) as a dense-prediction and classification backbone."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import register_backbone
from ..variants import ARCHS, POLAPP, RELEASED
from .backbone_utils import (PolaBackbone, check_frozen_stages, check_image, check_in_channels,
                             check_out_indices, parse_arch, stochastic_depth_rates)
from .polapp_blocks import ChannelLayerNorm, ConvStem, Downsample, PolaPPBlock, PolaPPStage

#: stochastic depth of each released arch (the authors' values, hard-coded in their code)
RELEASED_DROP_PATH = {model.arch: model.drop_path_rate for model in RELEASED
                      if model.family == POLAPP}
LINEAR_STAGES = (0, 1)  # polarity-aware linear attention; stages 2-3 use global softmax


@register_backbone
class PolaPP(PolaBackbone):
    """PolaFormer++ backbone for detection, segmentation and classification.

    A convolutional stem (stride 4, BatchNorm), then four stages of blocks (conditional
    position conv, attention, conv FFN, layer scale) with a 3x3 stride-2 conv + BatchNorm
    between them. Stages 0-1 use polarity-aware linear attention, stages 2-3 global
    softmax attention, both over the whole stage map with 2-D rotary positions built for
    the actual grid. Any input size works: stage ``i`` is (ceil(H / 2^(i+2)), ceil(W /
    2^(i+2))), as the authors' code computes it for sizes that are not multiples of 32.

    Outputs: a tuple of (B, C_i, H_i, W_i) maps for ``i`` in ``out_indices``, each taken
    before the downsampling and normalised by ``extra_norms[i]`` (a LayerNorm over the
    channels, new weights not in the ImageNet files), as the authors' detection and
    segmentation backbones do; ``out_norms=False`` returns the raw maps (classification).
    All four norms exist whatever ``out_indices`` is (key parity with the authors' dense
    files); those of stages not in ``out_indices`` are frozen (``requires_grad=False``), so
    that DDP needs no ``find_unused_parameters``.

    Parameter names follow the authors' checkpoints, which load as they are through
    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``: the weights under ``'model'``
    (the EMA weights only with ``weights='state_dict_ema'`` in that dict), the classifier
    (``proj``, ``norm``, ``head``) dropped, ``extra_norms`` reported as newly initialised.

    Precision: the linear-attention core runs in float32 with autocast off (its ``exp`` of
    untempered keys overflows fp16); the rest follows autocast.

    Args:
        arch (str | dict): 'b0'-'b5', or a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (4 ints each; head dims a multiple of 4) and optionally
            ``layer_scale_init`` (4 floats, default 1) and ``mlp_ratio`` (default 3.5).
        in_channels (int): input channels.
        drop_path_rate (float, optional): maximal stochastic depth, increasing linearly
            over all blocks; None takes the released value of ``arch`` (b0-b2 0.1, b3
            0.15, b4 0.4, b5 0.55; 0.1 for a dict).
        out_indices (Sequence[int]): stages whose outputs are returned (0-3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, k also stages 1..k (the
            downsampling into each, its blocks and its output norm).
        norm_eval (bool): keep the stem's and the downsamplings' BatchNorms in eval mode
            (frozen statistics) while training; their affine weights still train.
        norm_cfg (dict): norm of the stem and the downsamplings, e.g.
            ``dict(type='SyncBN')`` for statistics synchronised across GPUs.
        out_norms (bool): normalise the outputs with ``extra_norms``.
        with_cp (bool): activation checkpointing per block.
        attn_impl (str): core of the linear attention: 'auto' (the lean PyTorch path,
            its elementwise steps compiled on CPU for large maps), 'torch' (the lean path,
            eager) or 'reference' (the authors' plain form, for checks).
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=PATH)``.
    """

    arch_zoo: Dict[str, Dict] = ARCHS[POLAPP]
    num_stages = 4
    classifier_keys = r'^(proj|norm|head)\.'

    def __init__(self,
                 arch: Union[str, Dict] = 'b2',
                 in_channels: int = 3,
                 drop_path_rate: Optional[float] = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: Optional[Dict] = None,
                 out_norms: bool = True,
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        if drop_path_rate is None:
            drop_path_rate = RELEASED_DROP_PATH.get(arch, 0.1) if isinstance(arch, str) else 0.1
        arch = parse_arch(self.arch_zoo, arch,
                          per_stage=('embed_dims', 'depths', 'num_heads'), scalars=(),
                          optional=dict(mlp_ratio=3.5, layer_scale_init=[1.] * self.num_stages),
                          num_stages=self.num_stages)
        scales, mlp_ratio = arch['layer_scale_init'], arch['mlp_ratio']
        if (not isinstance(scales, (list, tuple)) or len(scales) != self.num_stages
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0
                           for s in scales)):
            raise ValueError(f"malformed arch dict: 'layer_scale_init' must be "
                             f'{self.num_stages} positive numbers, got {scales!r}')
        self.arch = arch
        self.num_features = list(arch['embed_dims'])
        self.in_channels = check_in_channels(in_channels)
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        self.frozen_stages = check_frozen_stages(frozen_stages, self.num_stages)
        self.norm_eval = norm_eval
        self.out_norms = out_norms
        norm_cfg = dict(type='BN', requires_grad=True) if norm_cfg is None else norm_cfg

        dims = arch['embed_dims']
        self.patch_embed = ConvStem(in_channels, dims[0], norm_cfg)
        rates = stochastic_depth_rates(drop_path_rate, arch['depths'])
        self.layers = nn.ModuleList()
        for i, depth in enumerate(arch['depths']):
            first = sum(arch['depths'][:i])
            blocks = [
                PolaPPBlock(dims[i], arch['num_heads'][i], i in LINEAR_STAGES,
                            mlp_ratio, scales[i], rates[first + j], with_cp, attn_impl)
                for j in range(depth)
            ]
            downsample = (Downsample(dims[i], dims[i + 1], norm_cfg)
                          if i < self.num_stages - 1 else None)
            self.layers.append(PolaPPStage(blocks, blocks[0].attn.head_dims, downsample))
        # All four exist whatever out_indices is: key parity with the authors' dense files.
        # Those of unused outputs are frozen, so that DDP needs no find_unused_parameters.
        self.extra_norms = nn.ModuleList(ChannelLayerNorm(d) for d in dims) if out_norms else None
        for i, norm in enumerate(self.extra_norms or ()):
            norm.requires_grad_(i in self.out_indices)
        self.new_key_prefixes = ('extra_norms.', ) if out_norms else ()
        self._freeze_stages()

    def official_init(self):
        """The authors' ImageNet initialisation: convs truncated normal (std .02) with zero
        bias, LayerNorms 1/0, Linear layers PyTorch's default, ``s1``/``s2`` zero and the
        layer scales at ``layer_scale_init`` (both set at construction)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                trunc_normal_(module.weight, std=.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem_parts(self) -> List[nn.Module]:
        return [self.patch_embed]

    def stage_parts(self, index: int) -> List[nn.Module]:
        parts = [self.layers[index - 1].downsample] if index > 0 else []
        parts.append(self.layers[index].blocks)
        if self.extra_norms is not None:
            parts.append(self.extra_norms[index])
        return parts

    def train(self, mode: bool = True):
        """Set the mode; frozen stages and (``norm_eval``) BatchNorms stay in eval."""
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, C_in, H, W) -> tuple of (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))) for
        i in ``out_indices``."""
        check_image(x, 32)
        if x.shape[1] != self.in_channels:
            raise ValueError(f'PolaPP expects {self.in_channels}-channel images, got '
                             f'{x.shape[1]} channels (shape {tuple(x.shape)})')
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            if i in self.out_indices:
                outs.append(out if self.extra_norms is None else self.extra_norms[i](out))
        return tuple(outs)
