"""Released PolaFormer ImageNet classifiers in MMPretrain and timm key layouts.

A released file holds the official backbone keys plus ``head.weight``/``head.bias``.
:func:`official_classifier_state_dict` converts it into ``backbone.*`` + ``head.fc.*``
(MMPretrain's ``ImageClassifier`` with a ``LinearClsHead``) or ``backbone.*`` + ``head.*``
(:class:`pola_mm.models.PolaFormerClassifier`, the timm models), and refuses a file of
another architecture with a message naming both (:func:`describe_official_arch` reads the
architecture from the key layout and names it from :data:`pola_mm.variants.RELEASED`).
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..variants import ARCHS, RELEASED, SWIN
from .weights import drop_classifier_and_buffers

# (family, first-stage embed dims, blocks per stage, stage-1 positional tokens): what the
# official key layout tells of an architecture.
Signature = Tuple[str, int, Tuple[int, ...], Optional[int]]

# How each family's official layout shows the signature: the patch embedding's weight,
# the (stage, block) indices of its blocks, the first stage's positional table.
_LAYOUTS = {
    SWIN: ('patch_embed.proj.weight', r'layers\.(\d+)\.blocks\.(\d+)\.',
           'layers.0.blocks.0.attn.positional_encoding'),
    'PolaPVT': ('patch_embed1.proj.weight', r'block(\d+)\.(\d+)\.', 'pos_embed1'),
}


def _released_signature(family: str, arch: str, img_size: int) -> Signature:
    arch_cfg = ARCHS[family][arch]
    embed_dims = arch_cfg['embed_dims']
    first_dims = embed_dims if isinstance(embed_dims, int) else embed_dims[0]
    return family, first_dims, tuple(arch_cfg['depths']), (img_size // 4)**2


_RELEASED_SIGNATURES: Dict[Signature, str] = {
    _released_signature(model.family, model.arch, model.img_size): model.name
    for model in RELEASED
}


def _blocks_per_stage(state_dict: Mapping[str, torch.Tensor], pattern: str) -> tuple:
    """Count the blocks of each stage; ``pattern`` captures (stage, block) indices."""
    blocks: Dict[int, set] = {}
    for key in state_dict:
        match = re.match(pattern, key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return tuple(len(blocks[stage]) for stage in sorted(blocks))


def describe_official_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the released architecture whose official key layout ``state_dict`` has.

    Returns a released name such as ``'pola_swin_tiny'``, or a description of the
    layout when it matches none of them.
    """
    for family, (embed_key, block_pattern, pos_key) in _LAYOUTS.items():
        if embed_key not in state_dict:
            continue
        embed_dims = state_dict[embed_key].shape[0]
        depths = _blocks_per_stage(state_dict, block_pattern)
        pos = state_dict.get(pos_key)
        tokens = pos.shape[1] if pos is not None else None
        return _RELEASED_SIGNATURES.get(
            (family, embed_dims, depths, tokens),
            f'a {family} layout (embed dims {embed_dims}, depths {list(depths)}, '
            f'{tokens} stage-1 positional tokens)')
    return 'no PolaFormer layout'


def official_classifier_state_dict(official: Mapping[str, torch.Tensor],
                                   backbone: nn.Module,
                                   head_prefix: Optional[str] = 'head.fc.',
                                   checkpoint_name: str = 'the checkpoint'
                                   ) -> 'OrderedDict[str, torch.Tensor]':
    """Convert a released classifier's weights for a classifier around ``backbone``.

    Args:
        official (Mapping[str, Tensor]): Official-layout weights: backbone keys plus
            ``head.weight`` (num_classes, C) and ``head.bias`` (num_classes, ).
        backbone (nn.Module): The ``PolaSwinTransformer`` / ``PolaPVT`` they are for.
        head_prefix (str, optional): Prefix of the classifier's linear head:
            ``'head.fc.'`` for MMPretrain's ``LinearClsHead``, ``'head.'`` for timm.
            None leaves the head out (a new head is trained).
        checkpoint_name (str): How to name the file in error messages.

    Returns:
        OrderedDict: ``backbone.<key>`` for every backbone weight, plus
        ``<head_prefix>weight`` and ``<head_prefix>bias``.

    Raises:
        RuntimeError: The weights are of another architecture than ``backbone``, or
            the head is missing.
    """
    model_arch = describe_official_arch(backbone.state_dict())
    file_arch = describe_official_arch(official)
    if file_arch != model_arch:
        raise RuntimeError(f'{checkpoint_name} holds {file_arch} weights, but the model is '
                           f'{model_arch}; use the config/model of {file_arch}')
    converted = backbone.convert_official_state_dict(drop_classifier_and_buffers(official))
    state_dict = OrderedDict((f'backbone.{key}', value) for key, value in converted.items())
    if head_prefix is not None:
        for name in ('weight', 'bias'):
            if f'head.{name}' not in official:
                raise RuntimeError(f'{checkpoint_name} has no classifier key head.{name}: '
                                   'it is not a released ImageNet classifier')
            state_dict[f'{head_prefix}{name}'] = official[f'head.{name}']
    return state_dict
