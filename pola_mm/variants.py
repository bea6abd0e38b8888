"""The one table of PolaFormer and PolaFormer++ architectures and released ImageNet models.

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
POLAPP = 'PolaPP'
#: the PolaFormer (ICLR 2025) families; PolaFormer++ (``POLAPP``) is the authors' later one
V1_FAMILIES = (SWIN, PVT)

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
    # PolaFormer++: linear-attention stages 0-1, global softmax stages 2-3 (mlp_ratio 3.5);
    # ``layer_scale_init`` is the initial value of each stage's gamma_1/gamma_2.
    POLAPP: {
        'b0': dict(embed_dims=[32, 64, 128, 384], depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 12],
                   layer_scale_init=[1., 1., 1., 1.]),
        'b1': dict(embed_dims=[32, 64, 192, 384], depths=[2, 2, 4, 2], num_heads=[1, 2, 6, 12],
                   layer_scale_init=[1., 1., 1., 1.]),
        'b2': dict(embed_dims=[64, 128, 256, 512], depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8],
                   layer_scale_init=[1., 1., 1., 1.]),
        'b3': dict(embed_dims=[64, 128, 320, 512], depths=[3, 5, 9, 3], num_heads=[1, 2, 5, 8],
                   layer_scale_init=[1., 1., 1., 1.]),
        'b4': dict(embed_dims=[96, 192, 384, 512], depths=[4, 6, 12, 6], num_heads=[1, 2, 6, 8],
                   layer_scale_init=[1., 1., 1e-6, 1e-6]),
        'b5': dict(embed_dims=[96, 192, 448, 640], depths=[4, 7, 19, 8], num_heads=[1, 2, 7, 10],
                   layer_scale_init=[1e-6, 1e-6, 1e-6, 1e-6]),
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
        head_args: arguments of the classifier's head beyond the backbone (PolaFormer++:
            ``projection``, the width of its 1x1 conv before pooling).
    """
    name: str
    family: str
    arch: str
    img_size: int
    drop_path_rate: float
    top1: Optional[float]
    backbone_args: dict = field(default_factory=dict)
    head_args: dict = field(default_factory=dict)

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
    ReleasedModel('polapp_b0', POLAPP, 'b0', 224, 0.1, 76.9, head_args=dict(projection=2048)),
    ReleasedModel('polapp_b1', POLAPP, 'b1', 224, 0.1, 79.1, head_args=dict(projection=2048)),
    ReleasedModel('polapp_b2', POLAPP, 'b2', 224, 0.1, 82.8, head_args=dict(projection=2048)),
    ReleasedModel('polapp_b3', POLAPP, 'b3', 224, 0.15, 84.3, head_args=dict(projection=2048)),
    ReleasedModel('polapp_b4', POLAPP, 'b4', 224, 0.4, 85.4, head_args=dict(projection=2048)),
    ReleasedModel('polapp_b5', POLAPP, 'b5', 224, 0.55, 85.6, head_args=dict(projection=2560)),
)
RELEASED_BY_NAME: Dict[str, ReleasedModel] = {model.name: model for model in RELEASED}


def released_model(name: str) -> ReleasedModel:
    """The released model called ``name``; a ValueError lists the names otherwise."""
    if name not in RELEASED_BY_NAME:
        raise ValueError(f'unknown released model {name!r}; choose one of '
                         f'{sorted(RELEASED_BY_NAME)}')
    return RELEASED_BY_NAME[name]
