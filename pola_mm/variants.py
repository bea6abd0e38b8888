"""The one table of PolaFormer architectures and released ImageNet models.

:data:`ARCHS` holds each family's named architectures (the backbones' ``arch_zoo``);
:data:`RELEASED` lists the authors' ImageNet classifiers: the backbone they are built on,
their image size, the timm model name pola_mm registers for them, the file name the docs
and configs use for the downloaded weights, their stochastic depth and the paper's top-1.
The backbones, the timm models, the checks of released files, ``tools/analysis/get_flops.py``
and the tests all read it.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

SWIN = 'PolaSwinTransformer'
PVT = 'PolaPVT'

ARCHS: Dict[str, Dict[str, dict]] = {
    SWIN: {
        'tiny': dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
        'small': dict(embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
        'base': dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
    },
    PVT: {
        name: dict(embed_dims=[64, 128, 320, 512], depths=depths, num_heads=[1, 2, 5, 8],
                   mlp_ratios=[8, 8, 4, 4])
        for name, depths in (('tiny', [2, 2, 2, 2]), ('small', [3, 4, 6, 3]),
                             ('medium', [3, 4, 18, 3]), ('large', [3, 8, 27, 3]))
    },
}


@dataclass(frozen=True)
class ReleasedModel:
    """One released ImageNet classifier.

    Attributes:
        name: timm model name, also the stem of the weights file (``<name>.pth``).
        family: backbone type (``'PolaSwinTransformer'`` or ``'PolaPVT'``).
        arch: name in ``ARCHS[family]``.
        img_size: training and evaluation image size.
        drop_path_rate: the authors' stochastic depth for (fine-)tuning.
        top1: ImageNet-1k top-1 (%) in the paper, None where it lists none.
        backbone_args: further backbone arguments (``pretrain_img_size``, ...).
    """
    name: str
    family: str
    arch: str
    img_size: int
    drop_path_rate: float
    top1: Optional[float]
    backbone_args: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> str:
        """File name of the downloaded weights, as the configs and docs use it."""
        return f'{self.name}.pth'

    def backbone_cfg(self) -> dict:
        """Arguments that build this model's backbone (``arch`` and ``backbone_args``)."""
        return dict(arch=self.arch, **self.backbone_args)


RELEASED: Tuple[ReleasedModel, ...] = (
    ReleasedModel('pola_swin_tiny', SWIN, 'tiny', 224, 0.2, 82.6),
    ReleasedModel('pola_swin_small', SWIN, 'small', 224, 0.3, 83.6),
    ReleasedModel('pola_swin_base', SWIN, 'base', 224, 0.5, 83.8),
    ReleasedModel('pola_swin_base_384', SWIN, 'base', 384, 0.5, None,
                  dict(pretrain_img_size=384, window_size=12)),
    ReleasedModel('pola_pvt_tiny', PVT, 'tiny', 224, 0.1, 78.8),
    ReleasedModel('pola_pvt_small', PVT, 'small', 224, 0.1, 81.9),
    ReleasedModel('pola_pvt_medium', PVT, 'medium', 224, 0.3, None),
    ReleasedModel('pola_pvt_large', PVT, 'large', 224, 0.3, None),
)
RELEASED_BY_NAME: Dict[str, ReleasedModel] = {model.name: model for model in RELEASED}


def released_model(name: str) -> ReleasedModel:
    """The released model called ``name``; a ValueError lists the names otherwise."""
    if name not in RELEASED_BY_NAME:
        raise ValueError(f'unknown released model {name!r}; choose one of '
                         f'{sorted(RELEASED_BY_NAME)}')
    return RELEASED_BY_NAME[name]
