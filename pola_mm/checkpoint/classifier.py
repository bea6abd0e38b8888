"""Released PolaFormer and PolaFormer++ ImageNet classifiers in MMPretrain and timm key layouts.

A released file holds the official backbone keys plus the classifier: PolaFormer's linear
``head.weight`` (classes, C) / ``head.bias``; PolaFormer++'s ``proj.*`` (1x1 conv C -> P),
``norm.*`` (BatchNorm, with its statistics) and a 1x1 conv ``head.weight`` (classes, P, 1, 1)
/ ``head.bias``. :func:`official_classifier_state_dict` converts it into ``backbone.*``, for
PolaFormer++ ``neck.proj.*`` / ``neck.norm.*`` (:class:`pola_mm.models.PolaPPClassifierNeck`),
and a linear head: ``head.fc.*`` (MMPretrain's ``ImageClassifier`` with a
``LinearClsHead``) or ``head.*`` (:class:`pola_mm.models.PolaFormerClassifier`, the timm
models); the conv head's kernel is squeezed to (classes, P). A file of another
architecture is refused with a message naming both (:func:`describe_official_arch` reads
the architecture from the key layout and names it from :data:`pola_mm.variants.RELEASED`).
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..variants import ARCHS, POLAPP, PVT, RELEASED, SWIN
from .weights import drop_classifier_and_buffers

# (family, first-stage embed dims, blocks per stage, stage-1 positional tokens or None):
# what the official key layout tells of an architecture.
Signature = Tuple[str, int, Tuple[int, ...], Optional[int]]

# How each family's official layout shows the signature: the weight whose first dim is the
# first stage's width, the (stage, block) indices of its blocks, the first stage's
# positional table (None: PolaFormer++ has none).
_LAYOUTS = {
    SWIN: ('patch_embed.proj.weight', r'layers\.(\d+)\.blocks\.(\d+)\.',
           'layers.0.blocks.0.attn.positional_encoding'),
    PVT: ('patch_embed1.proj.weight', r'block(\d+)\.(\d+)\.', 'pos_embed1'),
    POLAPP: ('patch_embed.proj.9.weight', r'layers\.(\d+)\.blocks\.(\d+)\.', None),
}


def _released_signature(family: str, arch: str, img_size: int) -> Signature:
    arch_cfg = ARCHS[family][arch]
    embed_dims = arch_cfg['embed_dims']
    first_dims = embed_dims if isinstance(embed_dims, int) else embed_dims[0]
    tokens = (img_size // 4)**2 if _LAYOUTS[family][2] else None
    return family, first_dims, tuple(arch_cfg['depths']), tokens


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
        pos = state_dict.get(pos_key) if pos_key else None
        tokens = pos.shape[1] if pos is not None else None
        positional = f', {tokens} stage-1 positional tokens' if pos_key else ''
        return _RELEASED_SIGNATURES.get(
            (family, embed_dims, depths, tokens),
            f'a {family} layout (embed dims {embed_dims}, depths {list(depths)}{positional})')
    return 'no PolaFormer layout'


def official_neck_weights(official: Mapping[str, torch.Tensor],
                          classifier_keys: str) -> Dict[str, torch.Tensor]:
    """The released classifier's layers between the backbone and the head, under their
    official names: the keys matching the backbone's anchored ``classifier_keys`` other
    than ``head.*`` (PolaFormer++: ``proj.*`` and ``norm.*``; none for PolaFormer)."""
    classifier = re.compile(classifier_keys)
    return {key: value for key, value in official.items()
            if classifier.match(key) and not key.startswith('head.')}


def official_classifier_state_dict(official: Mapping[str, torch.Tensor],
                                   backbone: nn.Module,
                                   head_prefix: Optional[str] = 'head.fc.',
                                   checkpoint_name: str = 'the checkpoint'
                                   ) -> 'OrderedDict[str, torch.Tensor]':
    """Convert a released classifier's weights for a classifier around ``backbone``.

    Args:
        official (Mapping[str, Tensor]): Official-layout weights: backbone keys, for
            PolaFormer++ ``proj.*`` and ``norm.*``, and ``head.weight`` (num_classes, C)
            or, PolaFormer++, (num_classes, P, 1, 1), and ``head.bias`` (num_classes, ).
        backbone (nn.Module): The ``PolaSwinTransformer`` / ``PolaPVT`` / ``PolaPP``
            they are for.
        head_prefix (str, optional): Prefix of the classifier's linear head:
            ``'head.fc.'`` for MMPretrain's ``LinearClsHead``, ``'head.'`` for timm.
            None leaves the head out (a new head is trained).
        checkpoint_name (str): How to name the file in error messages.

    Returns:
        OrderedDict: ``backbone.<key>`` for every backbone weight, ``neck.<key>`` for
        PolaFormer++'s ``proj.*`` and ``norm.*``, plus ``<head_prefix>weight``
        (num_classes, C or P) and ``<head_prefix>bias``.

    Raises:
        RuntimeError: The weights are of another architecture than ``backbone``, or
            the head is missing.
    """
    model_arch = describe_official_arch(backbone.state_dict())
    file_arch = describe_official_arch(official)
    if file_arch != model_arch:
        raise RuntimeError(f'{checkpoint_name} holds {file_arch} weights, but the model is '
                           f'{model_arch}; use the config/model of {file_arch}')
    converted = backbone.convert_official_state_dict(
        drop_classifier_and_buffers(official, classifier_keys=backbone.classifier_keys))
    state_dict = OrderedDict((f'backbone.{key}', value) for key, value in converted.items())
    state_dict.update((f'neck.{key}', value) for key, value in
                      official_neck_weights(official, backbone.classifier_keys).items())
    if head_prefix is not None:
        for name in ('weight', 'bias'):
            if f'head.{name}' not in official:
                raise RuntimeError(f'{checkpoint_name} has no classifier key head.{name}: '
                                   'it is not a released ImageNet classifier')
        # PolaFormer++'s head is a 1x1 conv: (classes, P, 1, 1) -> the linear (classes, P).
        state_dict[f'{head_prefix}weight'] = official['head.weight'].flatten(1)
        state_dict[f'{head_prefix}bias'] = official['head.bias']
    return state_dict
