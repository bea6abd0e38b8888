"""Released PolaFormer ImageNet classifiers in MMPretrain (and timm) key layouts.

MMPretrain's own pieces already compute the official classifiers: an ``ImageClassifier``
with the Pola backbone (``out_indices=(3, )``), ``GlobalAveragePooling`` and
``LinearClsHead``. Pola-Swin's last output norm is the official final ``norm`` (official:
norm, then average); Pola-PVT's output has no norm (official: average WITHOUT its unused
``norm``). What is left is the checkpoint: a released file holds the official backbone keys
plus ``head.weight``/``head.bias``. This module converts it, through
:mod:`pola_mm.checkpoint`, into ``backbone.*`` + ``head.fc.*`` (MMPretrain) or
``backbone.*`` + ``head.*`` (:mod:`pola_mm.timm`), and refuses a file of another
architecture with a message naming both.

:class:`OfficialClassifierCheckpointHook` lets a config's ``load_from`` (and so
``tools/test.py CONFIG CHECKPOINT``) take the released file as it is.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..checkpoint import convert_official_state_dict, load_into, select_model_weights
from ..registry import register_hook

# Signatures of the released architectures, read from their official key layout:
# Swin: (embed dim, blocks per stage, stage-1 positional-encoding tokens);
# PVT: blocks per stage.
_SWIN_ARCHS = {
    (96, (2, 2, 6, 2), 56 * 56): 'pola_swin_tiny',
    (96, (2, 2, 18, 2), 56 * 56): 'pola_swin_small',
    (128, (2, 2, 18, 2), 56 * 56): 'pola_swin_base',
    (128, (2, 2, 18, 2), 96 * 96): 'pola_swin_base_384',
}
_PVT_ARCHS = {
    (2, 2, 2, 2): 'pola_pvt_tiny',
    (3, 4, 6, 3): 'pola_pvt_small',
    (3, 4, 18, 3): 'pola_pvt_medium',
    (3, 8, 27, 3): 'pola_pvt_large',
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
    if 'patch_embed.proj.weight' in state_dict:
        embed_dims = state_dict['patch_embed.proj.weight'].shape[0]
        depths = _blocks_per_stage(state_dict, r'layers\.(\d+)\.blocks\.(\d+)\.')
        pos = state_dict.get('layers.0.blocks.0.attn.positional_encoding')
        tokens = pos.shape[1] if pos is not None else None
        return _SWIN_ARCHS.get(
            (embed_dims, depths, tokens),
            f'a Pola-Swin layout (embed dims {embed_dims}, depths {list(depths)}, '
            f'{tokens} stage-1 positional tokens)')
    if 'patch_embed1.proj.weight' in state_dict:
        depths = _blocks_per_stage(state_dict, r'block(\d+)\.(\d+)\.')
        return _PVT_ARCHS.get(depths, f'a Pola-PVT layout (depths {list(depths)})')
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
    state_dict = OrderedDict(
        (f'backbone.{key}', value)
        for key, value in convert_official_state_dict(official, backbone).items())
    if head_prefix is not None:
        for name in ('weight', 'bias'):
            if f'head.{name}' not in official:
                raise RuntimeError(f'{checkpoint_name} has no classifier key head.{name}: '
                                   'it is not a released ImageNet classifier')
            state_dict[f'{head_prefix}{name}'] = official[f'head.{name}']
    return state_dict


def _is_openmmlab_classifier(checkpoint: Mapping) -> bool:
    """Whether ``checkpoint`` is MMEngine's format for a classifier (``backbone.*`` keys)."""
    weights = checkpoint.get('state_dict')
    return isinstance(weights, Mapping) and any(
        key.startswith(('backbone.', 'module.backbone.')) for key in weights)


@register_hook
class OfficialClassifierCheckpointHook(Hook):
    """Let ``load_from`` take a released PolaFormer ImageNet file as it is.

    MMEngine reads ``load_from`` into a dict and calls ``after_load_checkpoint`` before
    loading it into the model. A released file (official keys under ``'model'``, or a
    bare official state dict, or under ``'state_dict'``) is replaced here by ``{'state_dict': ...}`` in the
    classifier's layout (``backbone.*``, ``head.fc.*``), after checking that it is of the
    model's architecture and loading it strictly (MMEngine's own load that follows is
    not strict). An OpenMMLab classifier checkpoint (``'state_dict'`` with ``backbone.*``
    keys, e.g. from fine-tuning or resuming) passes through.
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if _is_openmmlab_classifier(checkpoint):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        official = select_model_weights(checkpoint)
        name = str(runner.cfg.get('load_from'))
        converted = official_classifier_state_dict(official, model.backbone,
                                                   checkpoint_name=name)
        try:  # strict: every weight of the classifier, with its shape
            load_into(model, converted)
        except RuntimeError as error:
            raise RuntimeError(f'{name}: {error}') from None
        checkpoint.clear()
        checkpoint['state_dict'] = converted
