"""The released PolaFormer and PolaFormer++ ImageNet classifiers as timm models.

After ``import pola_mm`` the released names (:data:`pola_mm.variants.RELEASED`:
``pola_swin_tiny``, ``pola_swin_small``, ``pola_swin_base``, ``pola_swin_base_384``,
``pola_pvt_tiny``, ``pola_pvt_small``, ``pola_pvt_medium``, ``pola_pvt_large``,
``polapp_b0`` .. ``polapp_b5``) build with :func:`timm.create_model`. Nothing is
downloaded: pass the released file through ``pretrained_cfg_overlay``::

    model = timm.create_model('pola_swin_tiny', pretrained=True,
                              pretrained_cfg_overlay=dict(file='pola_swin_tiny.pth'))

The file is read with :func:`pola_mm.checkpoint.read_checkpoint` (restricted,
weights-only unpickling); its ``'model'`` weights are taken, the EMA weights of a
training file only when named: ``timm.create_model(..., weights='state_dict_ema')``
(``pretrained_cfg`` has no field for it). They are converted by
:func:`pola_mm.checkpoint.official_classifier_state_dict`, the same path the MMPretrain
configs use, so both give the same logits. ``model.pretrained_cfg`` carries the
official test-time preprocessing: bicubic, crop_pct 0.875 at 224 (a short-side resize to
256 for PolaFormer, a square 256x256 resize, ``crop_mode='squash'``, for PolaFormer++,
then the centre 224 crop); a plain 384x384 resize, ``crop_mode='squash'``, for
``pola_swin_base_384``.
"""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..checkpoint import (load_into, official_classifier_state_dict, read_checkpoint,
                          select_model_weights)
from ..variants import POLAPP, PVT, RELEASED, SWIN, ReleasedModel
from .polapp_classifier_neck import PolaPPClassifierNeck
from .released import BACKBONE_TYPES

#: backbone arguments the classifiers of a family need: PolaFormer++'s projection sees
#: the raw last stage map (no ``extra_norms``)
CLASSIFIER_BACKBONE_ARGS = {POLAPP: dict(out_norms=False)}


class PolaFormerClassifier(nn.Module):
    """An ImageNet classifier with timm's model API: backbone, optional projection neck,
    average pooling, linear head.

    Computes what the official classifiers compute: Pola-Swin's last stage map goes
    through the official final ``norm`` (the backbone's last output norm) before pooling;
    Pola-PVT's last stage map is pooled without a norm; PolaFormer++'s raw last stage map
    goes through ``neck`` (:class:`PolaPPClassifierNeck`: the authors' ``proj`` 1x1 conv
    to ``projection`` channels, BatchNorm and SiLU) before pooling, and the authors' 1x1
    conv ``head`` is the linear ``head`` here (its kernel squeezed on loading).

    As in timm's EfficientNet (``conv_head``, ``bn2`` before the pooling), the projection
    belongs to the features: :meth:`forward_features` returns the (B, P, h, w) projected
    map, ``num_features`` is P, ``forward_head(pre_logits=True)`` the pooled (B, P), and
    :meth:`reset_classifier` replaces only the linear head (the projection is kept).

    Args:
        backbone (str): ``'PolaSwinTransformer'``, ``'PolaPVT'`` or ``'PolaPP'``.
        backbone_args (dict): Arguments of the backbone (``arch``, ...).
        num_classes (int): Classes of the head; 0 gives no head (pooled features).
        in_chans (int): Input channels. Defaults to 3.
        drop_rate (float): Dropout before the head. Defaults to 0.
        drop_path_rate (float): Stochastic depth of the backbone.
        global_pool (str): Only ``'avg'`` (the official pooling) is supported.
        attn_impl (str): implementation of the Pola attention core (see the backbones).
        projection (int, optional): Width P of the projection neck (PolaFormer++: 2048,
            2560 for b5); None: no neck (PolaFormer).
    """

    def __init__(self,
                 backbone: str,
                 backbone_args: dict,
                 num_classes: int = 1000,
                 in_chans: int = 3,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 global_pool: str = 'avg',
                 attn_impl: str = 'auto',
                 projection: Optional[int] = None):
        super().__init__()
        if global_pool != 'avg':
            raise ValueError(f"PolaFormer classifiers pool with 'avg' only, got {global_pool!r}")
        self.backbone = BACKBONE_TYPES[backbone](
            in_channels=in_chans, drop_path_rate=drop_path_rate, out_indices=(3, ),
            attn_impl=attn_impl, **backbone_args)
        channels = self.backbone.num_features[-1]
        self.neck = PolaPPClassifierNeck(channels, projection) if projection else None
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = projection or channels
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
        """(B, 3, H, W) images -> (B, C, H/32, W/32) last-stage map, projected to (B, P,
        H/32, W/32) by the neck where there is one."""
        x = self.backbone(x)[-1]
        return x if self.neck is None else self.neck.project(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) map -> (B, num_classes) logits, or (B, num_features)
        pooled features."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _load_released_file(model: PolaFormerClassifier, weights: Optional[str]) -> None:
    """Load the file named by ``model.pretrained_cfg['file']`` into ``model``: its weights
    under ``weights`` if given (e.g. ``'state_dict_ema'``), else under ``'model'``.

    An ImageNet head whose size differs from ``model.num_classes`` is left out (the new
    head keeps its initialisation; a PolaFormer++ projection neck is loaded), as timm does
    for other models.
    """
    path = model.pretrained_cfg.get('file')
    if not path:
        raise ValueError(
            f"{model.pretrained_cfg.get('architecture')}: pola_mm downloads nothing; pass the "
            "released file: timm.create_model(name, pretrained=True, "
            "pretrained_cfg_overlay=dict(file=PATH))")
    official = select_model_weights(read_checkpoint(path), path, weights=weights)
    keep_head = model.num_classes == model.pretrained_cfg['num_classes']
    state_dict = official_classifier_state_dict(
        official, model.backbone, head_prefix='head.' if keep_head else None,
        checkpoint_name=path)
    load_into(model, state_dict, expected_new=() if keep_head else ('head.', ))
    print_log(f'Loaded {path}' + (f' ({weights})' if weights else '')
              + f' into {model.pretrained_cfg.get("architecture")}'
              + ('' if keep_head else f' (new {model.num_classes}-class head)'),
              logger='current')


def _create(variant: str, backbone: str, backbone_args: dict, default_drop_path: float,
            pretrained: bool, weights: Optional[str] = None,
            **kwargs) -> PolaFormerClassifier:
    if kwargs.pop('features_only', False):
        raise ValueError(f'{variant}: features_only is not supported; build '
                         f'pola_mm.{backbone} with out_indices for feature maps')
    if weights is not None and not pretrained:
        raise ValueError(f'{variant}: weights={weights!r} names the entry of the released '
                         'file to load; it needs pretrained=True')
    kwargs.setdefault('drop_path_rate', default_drop_path)
    model = build_model_with_cfg(
        PolaFormerClassifier, variant, pretrained=False,
        backbone=backbone, backbone_args=backbone_args, **kwargs)
    if pretrained:
        _load_released_file(model, weights)
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
        **kwargs)


_FIRST_CONV = {SWIN: 'backbone.patch_embed.proj', PVT: 'backbone.patch_embed1.proj',
               POLAPP: 'backbone.patch_embed.proj.0'}
_SOURCES = {
    SWIN: dict(paper_ids='arXiv:2501.15061'),
    PVT: dict(paper_ids='arXiv:2501.15061'),
    POLAPP: dict(origin_url='https://github.com/ZacharyMeng/PolaFormerPP'),
}


def _released_cfg(model: ReleasedModel) -> dict:
    known = dict(first_conv=_FIRST_CONV[model.family], **_SOURCES[model.family])
    if model.img_size != 224:
        # The official evaluation at another size resizes without cropping (TEST.CROP False).
        return _cfg(input_size=model.img_size, crop_pct=1.0, crop_mode='squash', **known)
    if model.family == POLAPP:
        # The authors' evaluation: a square 256x256 resize (not the shorter side), crop 224.
        return _cfg(crop_mode='squash', **known)
    return _cfg(**known)


default_cfgs = generate_default_cfgs(
    {f'{model.name}.in1k': _released_cfg(model) for model in RELEASED})


def _register(model: ReleasedModel) -> None:
    """Register ``model.name`` with ``timm.create_model``."""

    def create(pretrained: bool = False, **kwargs) -> PolaFormerClassifier:
        backbone_args = {**model.backbone_cfg(), **CLASSIFIER_BACKBONE_ARGS.get(model.family, {})}
        return _create(model.name, model.family, backbone_args, model.drop_path_rate,
                       pretrained, **{**model.head_args, **kwargs})

    top1 = f'ImageNet-1k top-1 {model.top1} (paper)' if model.top1 else 'top-1 not in the paper'
    create.__name__ = create.__qualname__ = model.name
    create.__doc__ = f'{model.name}: {model.family} {model.arch!r} at {model.img_size}, {top1}.'
    register_model(create)


for _model in RELEASED:
    _register(_model)
