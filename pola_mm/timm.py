"""The released PolaFormer ImageNet classifiers as timm models.

After ``import pola_mm.timm`` the names ``pola_swin_tiny``, ``pola_swin_small``,
``pola_swin_base``, ``pola_swin_base_384``, ``pola_pvt_tiny``, ``pola_pvt_small``,
``pola_pvt_medium`` and ``pola_pvt_large`` build with :func:`timm.create_model`. Nothing is
downloaded: pass the released file through ``pretrained_cfg_overlay``::

    model = timm.create_model('pola_swin_tiny', pretrained=True,
                              pretrained_cfg_overlay=dict(file='pola_swin_tiny.pth'))

The file is read with :func:`pola_mm.checkpoint.load_official_state_dict` (restricted,
weights-only unpickling) and converted by
:func:`pola_mm.models.classifiers.official_classifier_state_dict`, the same path the
MMPretrain configs use, so both give the same logits. ``model.pretrained_cfg`` carries the
official test-time preprocessing (bicubic, crop_pct 0.875 at 224; a plain 384x384 resize,
``crop_mode='squash'``, for ``pola_swin_base_384``).
"""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint import load_into, load_official_state_dict
from .models.classifiers import official_classifier_state_dict
from .models.pola_pvt import PolaPVT
from .models.pola_swin import PolaSwinTransformer

__all__ = ['PolaFormerClassifier']

_BACKBONES = {'PolaSwinTransformer': PolaSwinTransformer, 'PolaPVT': PolaPVT}


class PolaFormerClassifier(nn.Module):
    """An ImageNet classifier with timm's model API: backbone, average pooling, linear head.

    Computes what the official classifiers compute: Pola-Swin's last stage map goes
    through the official final ``norm`` (the backbone's last output norm) before pooling;
    Pola-PVT's last stage map is pooled without a norm.

    Args:
        backbone (str): ``'PolaSwinTransformer'`` or ``'PolaPVT'``.
        backbone_args (dict): Arguments of the backbone (``arch``, ...).
        num_classes (int): Classes of the head; 0 gives no head (pooled features).
        in_chans (int): Input channels. Defaults to 3.
        drop_rate (float): Dropout before the head. Defaults to 0.
        drop_path_rate (float): Stochastic depth of the backbone.
        global_pool (str): Only ``'avg'`` (the official pooling) is supported.
    """

    def __init__(self,
                 backbone: str,
                 backbone_args: dict,
                 num_classes: int = 1000,
                 in_chans: int = 3,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 global_pool: str = 'avg'):
        super().__init__()
        if global_pool != 'avg':
            raise ValueError(f"PolaFormer classifiers pool with 'avg' only, got {global_pool!r}")
        self.backbone = _BACKBONES[backbone](
            in_channels=in_chans, drop_path_rate=drop_path_rate, out_indices=(3, ),
            **backbone_args)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.backbone.num_features[-1]
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a new one with ``num_classes`` outputs (0: no head)."""
        if global_pool is not None and global_pool != 'avg':
            raise ValueError(f"PolaFormer classifiers pool with 'avg' only, got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, C, H/32, W/32) last-stage map."""
        return self.backbone(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) map -> (B, num_classes) logits, or (B, C) pooled features."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _load_released_file(model: PolaFormerClassifier) -> None:
    """Load the file named by ``model.pretrained_cfg['file']`` into ``model``.

    An ImageNet head whose size differs from ``model.num_classes`` is left out (the new
    head keeps its initialisation), as timm does for other models.
    """
    path = model.pretrained_cfg.get('file')
    if not path:
        raise ValueError(
            f"{model.pretrained_cfg.get('architecture')}: pola_mm downloads nothing; pass the "
            "released file: timm.create_model(name, pretrained=True, "
            "pretrained_cfg_overlay=dict(file=PATH))")
    official, _ = load_official_state_dict(path)
    keep_head = model.num_classes == model.pretrained_cfg['num_classes']
    state_dict = official_classifier_state_dict(
        official, model.backbone, head_prefix='head.' if keep_head else None,
        checkpoint_name=path)
    load_into(model, state_dict, expected_new=() if keep_head else ('head.', ))
    print_log(f'Loaded {path} into {model.pretrained_cfg.get("architecture")}'
              + ('' if keep_head else f' (new {model.num_classes}-class head)'),
              logger='current')


def _create(variant: str, backbone: str, backbone_args: dict, default_drop_path: float,
            pretrained: bool, **kwargs) -> PolaFormerClassifier:
    if kwargs.pop('features_only', False):
        raise ValueError(f'{variant}: features_only is not supported; build '
                         f'pola_mm.{backbone} with out_indices for feature maps')
    kwargs.setdefault('drop_path_rate', default_drop_path)
    model = build_model_with_cfg(
        PolaFormerClassifier, variant, pretrained=False,
        backbone=backbone, backbone_args=backbone_args, **kwargs)
    if pretrained:
        _load_released_file(model)
    return model


def _cfg(input_size: int = 224, crop_pct: float = 0.875, crop_mode: str = 'center',
         **kwargs) -> dict:
    return dict(
        url='',
        num_classes=1000,
        input_size=(3, input_size, input_size),
        pool_size=(input_size // 32, input_size // 32),
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        interpolation='bicubic',
        fixed_input_size=False,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        classifier='head',
        paper_ids='arXiv:2501.15061',
        **kwargs)


_SWIN_CFG = dict(first_conv='backbone.patch_embed.proj')
_PVT_CFG = dict(first_conv='backbone.patch_embed1.proj')

default_cfgs = generate_default_cfgs({
    'pola_swin_tiny.in1k': _cfg(**_SWIN_CFG),
    'pola_swin_small.in1k': _cfg(**_SWIN_CFG),
    'pola_swin_base.in1k': _cfg(**_SWIN_CFG),
    # The official 384 evaluation resizes to 384x384 without cropping (TEST.CROP False).
    'pola_swin_base_384.in1k': _cfg(input_size=384, crop_pct=1.0, crop_mode='squash',
                                    **_SWIN_CFG),
    'pola_pvt_tiny.in1k': _cfg(**_PVT_CFG),
    'pola_pvt_small.in1k': _cfg(**_PVT_CFG),
    'pola_pvt_medium.in1k': _cfg(**_PVT_CFG),
    'pola_pvt_large.in1k': _cfg(**_PVT_CFG),
})


@register_model
def pola_swin_tiny(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-Swin-T, ImageNet-1k top-1 82.6 (paper)."""
    return _create('pola_swin_tiny', 'PolaSwinTransformer', dict(arch='tiny'), 0.2,
                   pretrained, **kwargs)


@register_model
def pola_swin_small(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-Swin-S, ImageNet-1k top-1 83.6 (paper)."""
    return _create('pola_swin_small', 'PolaSwinTransformer', dict(arch='small'), 0.3,
                   pretrained, **kwargs)


@register_model
def pola_swin_base(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-Swin-B, ImageNet-1k top-1 83.8 (paper)."""
    return _create('pola_swin_base', 'PolaSwinTransformer', dict(arch='base'), 0.5,
                   pretrained, **kwargs)


@register_model
def pola_swin_base_384(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-Swin-B fine-tuned at 384x384 (top-1 not listed in the paper)."""
    return _create('pola_swin_base_384', 'PolaSwinTransformer',
                   dict(arch='base', pretrain_img_size=384, window_size=12), 0.5,
                   pretrained, **kwargs)


@register_model
def pola_pvt_tiny(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-PVT-T, ImageNet-1k top-1 78.8 (paper)."""
    return _create('pola_pvt_tiny', 'PolaPVT', dict(arch='tiny'), 0.1, pretrained, **kwargs)


@register_model
def pola_pvt_small(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-PVT-S, ImageNet-1k top-1 81.9 (paper)."""
    return _create('pola_pvt_small', 'PolaPVT', dict(arch='small'), 0.1, pretrained, **kwargs)


@register_model
def pola_pvt_medium(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-PVT-M (top-1 not listed in the paper)."""
    return _create('pola_pvt_medium', 'PolaPVT', dict(arch='medium'), 0.3, pretrained,
                   **kwargs)


@register_model
def pola_pvt_large(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
    """Pola-PVT-L (top-1 not listed in the paper)."""
    return _create('pola_pvt_large', 'PolaPVT', dict(arch='large'), 0.3, pretrained,
                   **kwargs)
