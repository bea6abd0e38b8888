"""Loading weights into pola_mm models: strict key and shape checks, positional tables
resized, and a report of what was loaded, converted, resized, newly initialised and
dropped.

Files are read by :func:`.reader.read_checkpoint` (weights-only unpickling). The name
conversion of official weights belongs to each backbone family
(``backbone.convert_official_state_dict``, next to the model it serves), that of a
released ImageNet classifier to :func:`.classifier.official_classifier_state_dict`;
nothing here depends on the models.
"""
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from ..ops.token_grid import resize_token_grid, square_grid_side
from .classifier import official_classifier_state_dict
from .reader import checkpoint_name, read_checkpoint
from .weights import describe_location, drop_classifier_and_buffers, select_model_weights

#: Positional tables, resized when the pretraining size differs: the last component of a
#: parameter's name, matched whole (Pola attention's ``positional_encoding``, Swin's
#: ``relative_position_bias_table``, Pola-PVT's stage tables ``pos_embed1``..``pos_embed4``).
RESIZABLE = re.compile(r'positional_encoding|relative_position_bias_table|pos_embed\d*')
KEYS_LISTED = 8  # keys named per kind in an error message


def key_listing(keys: Sequence[str], limit: int = KEYS_LISTED) -> str:
    """``'<count> (<first keys>, ...)'``: a list of keys short enough for an error message."""
    keys = list(keys)
    return f'{len(keys)} ({", ".join(keys[:limit])}{", ..." if len(keys) > limit else ""})'


def resize_to(name: str, value: Tensor, shape: torch.Size) -> Optional[Tensor]:
    """Resize a positional table to ``shape`` (bicubic, as the authors' 224->384
    recipe), or None when ``name`` is not a positional table (:data:`RESIZABLE`) or the
    shapes don't allow: other channels or heads, or tokens that are no square grid (e.g. a
    table with a class token)."""
    table = name.rsplit('.', 1)[-1]
    if not RESIZABLE.fullmatch(table) or value.dim() != len(shape):
        return None
    if table == 'relative_position_bias_table':  # ((2w-1)^2, heads)
        src, dst = square_grid_side(value.shape[0]), square_grid_side(shape[0])
        if value.shape[1] != shape[1] or src is None or dst is None:
            return None
        grid = value.float().T.reshape(1, -1, src, src)
        grid = F.interpolate(grid, size=(dst, dst), mode='bicubic', align_corners=False)
        return grid.reshape(-1, dst * dst).T.to(value.dtype)
    if value.dim() != 3 or value.shape[0] != 1 or value.shape[2] != shape[2]:  # (1, S*S, C)
        return None
    src, dst = square_grid_side(value.shape[1]), square_grid_side(shape[1])
    if src is None or dst is None:
        return None
    return resize_token_grid(value, (src, src), (dst, dst), 'bicubic')


def fit_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor],
                   expected_new: Tuple[str, ...] = ()
                   ) -> Tuple[Dict[str, Tensor], Dict[str, List[str]]]:
    """Check that ``state_dict`` fits ``model`` key for key and shape for shape,
    resizing positional tables of another grid; load nothing.

    Raises:
        RuntimeError: naming unexpected keys, missing keys (other than those starting
            with ``expected_new``) and shape mismatches that are not resizable.

    Returns:
        tuple: the weights to load, and a report with 'loaded', 'resized' and 'new'
        (initialised, not in ``state_dict``) key lists.
    """
    own = model.state_dict()
    report = dict(loaded=[], resized=[], new=[])
    unexpected = sorted(set(state_dict) - set(own))
    missing = sorted(k for k in set(own) - set(state_dict) if not k.startswith(expected_new))
    mismatched, to_load = [], {}
    for key, value in state_dict.items():
        if key not in own:
            continue
        if value.shape == own[key].shape:
            to_load[key] = value
            report['loaded'].append(key)
            continue
        resized = resize_to(key, value, own[key].shape)
        if resized is None:
            mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                              f'{tuple(own[key].shape)}')
        else:
            to_load[key] = resized
            report['resized'].append(f'{key} {tuple(value.shape)} -> {tuple(own[key].shape)}')
    if unexpected or missing or mismatched:
        raise RuntimeError(
            f'checkpoint does not fit {type(model).__name__}: unexpected keys '
            f'{key_listing(unexpected)}; missing keys {key_listing(missing)}; shape '
            f'mismatches {key_listing(mismatched)}. Is it a checkpoint of another '
            'architecture?')
    report['new'] = sorted(set(own) - set(to_load))
    return to_load, report


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor],
              expected_new: Tuple[str, ...] = ()) -> Dict[str, List[str]]:
    """Load ``state_dict`` into ``model`` strictly, resizing positional tables (see
    :func:`fit_state_dict`, whose report it returns)."""
    to_load, report = fit_state_dict(model, state_dict, expected_new)
    model.load_state_dict(to_load, strict=False)
    return report


def is_openmmlab_classifier(checkpoint: Mapping) -> bool:
    """Whether ``checkpoint`` holds an OpenMMLab classifier's weights (``backbone.*`` keys,
    possibly under ``module.``), under 'state_dict' (MMEngine's format, e.g. from training
    or fine-tuning) or at the top level; a released file's official keys never begin so."""
    weights = checkpoint.get('state_dict', checkpoint)
    return isinstance(weights, Mapping) and any(
        isinstance(key, str) and key.startswith(('backbone.', 'module.backbone.'))
        for key in weights)


def released_classifier_weights(checkpoint: Mapping, model: nn.Module,
                                name: str = 'the checkpoint',
                                weights: Optional[str] = None) -> Dict[str, Tensor]:
    """A released PolaFormer / PolaFormer++ ImageNet file's weights in the layout of
    ``model``, an MMPretrain classifier around a Pola backbone (``backbone.*``,
    PolaFormer++'s ``neck.*``, ``head.fc.*``).

    The official weights are taken from ``checkpoint`` by
    :func:`.weights.select_model_weights` (``weights`` if given, e.g.
    ``'state_dict_ema'``, else 'model', else 'state_dict', else the whole dict: a
    released training file, ``tools/convert_checkpoint.py``'s ``{'model': ...}`` or a
    bare official state dict) and converted by
    :func:`.classifier.official_classifier_state_dict`.

    Raises:
        TypeError: ``model`` has no Pola backbone.
        RuntimeError: naming ``name`` when the file is of another architecture than
            ``model``, has no classifier head, or its weights are not where expected.
    """
    backbone = getattr(model, 'backbone', None)
    if not hasattr(backbone, 'convert_official_state_dict'):
        raise TypeError(f'expected a classifier around a Pola backbone, got '
                        f'{type(model).__name__} with {type(backbone).__name__}')
    official = select_model_weights(checkpoint, name, weights=weights)
    return official_classifier_state_dict(official, backbone, checkpoint_name=name)


def load_model_checkpoint(model: nn.Module, path: Union[str, os.PathLike], map_location='cpu',
                          classifier: bool = False) -> Dict[str, List[str]]:
    """Load a checkpoint of a whole model (MMEngine's, as ``tools/train.py`` writes it:
    weights under 'state_dict', a ``module.`` prefix from distributed training removed)
    into ``model``, strictly (positional tables of another grid are resized, see
    :func:`load_into`). For tools that use a trained model outside a runner.

    With ``classifier`` (``model`` is an MMPretrain classifier around a Pola backbone),
    a file that is no OpenMMLab classifier checkpoint (:func:`is_openmmlab_classifier`)
    is taken as a released ImageNet classifier and converted
    (:func:`released_classifier_weights`), as the classification configs' ``load_from``
    is (:class:`pola_mm.OfficialClassifierCheckpointHook`): a released training file and
    ``tools/convert_checkpoint.py``'s output load as they are.

    Raises:
        ValueError: ``path`` is neither a str nor an ``os.PathLike``.
        FileNotFoundError / RuntimeError: naming ``path`` when it is missing, refused,
            unreadable, of another architecture, or does not fit ``model``.
    """
    path = checkpoint_name(path, 'path')
    checkpoint = read_checkpoint(path, map_location)
    if classifier and not is_openmmlab_classifier(checkpoint):
        weights = released_classifier_weights(checkpoint, model, path)
    else:
        weights = checkpoint.get('state_dict', checkpoint)
        weights = {re.sub(r'^module\.', '', key): value for key, value in weights.items()}
    try:
        return load_into(model, weights)
    except RuntimeError as error:
        raise RuntimeError(f'{path} does not fit the model: {error}') from None


#: Top-level modules of OpenMMLab models besides the backbone: their keys in a backbone's
#: checkpoint mean a whole model's file.
MODEL_PARTS = frozenset(('neck', 'head', 'decode_head', 'auxiliary_head', 'rpn_head', 'roi_head',
                         'bbox_head', 'mask_head', 'data_preprocessor'))


def load_pretrained_backbone(backbone: nn.Module, path: Union[str, os.PathLike],
                             prefix: Optional[str] = None, map_location='cpu',
                             weights: Optional[str] = None) -> Dict[str, List[str]]:
    """Load a released (or pola_mm) checkpoint into a Pola backbone and log a report.

    The classifier and the buffers rebuilt per input are dropped, the family's converter
    (``backbone.convert_official_state_dict``) maps the official names, and the rest must
    fit (positional tables are resized); only the keys the family declares new
    (``backbone.new_key_prefixes``, e.g. Pola-Swin's output norms ``norm0``-``norm2``) may
    be missing. ``prefix`` (e.g. ``'backbone'``) takes the backbone out of a whole
    model's checkpoint; ``weights`` names the checkpoint entry to take (e.g.
    ``'state_dict_ema'``; default 'model', else 'state_dict', else the whole dict).

    Raises:
        TypeError: ``backbone`` is not a Pola backbone.
        ValueError: ``path`` is neither a str nor an ``os.PathLike``.
        FileNotFoundError / RuntimeError: naming ``path`` when it is missing, refused,
            unreadable, or does not fit ``backbone``.
    """
    if not hasattr(backbone, 'convert_official_state_dict'):
        raise TypeError(f'expected a Pola backbone, got {type(backbone).__name__}')
    path = checkpoint_name(path, 'path')
    checkpoint = read_checkpoint(path, map_location)
    state_dict = select_model_weights(checkpoint, path, prefix, weights)
    conversion: Dict[str, List[str]] = dict(dropped=[], converted=[])
    state_dict = drop_classifier_and_buffers(state_dict, conversion['dropped'],
                                             backbone.classifier_keys)
    converted = backbone.convert_official_state_dict(state_dict, conversion)
    try:
        report = load_into(backbone, converted, backbone.new_key_prefixes)
    except RuntimeError as error:
        hint = ''
        if prefix is None and any(key.split('.')[0] in MODEL_PARTS for key in state_dict):
            hint = (" (it holds a whole model's weights: prefix='backbone' takes its "
                    'backbone)')
        raise RuntimeError(f'{path}: {error}{hint}') from None
    report.update(conversion)
    print_log(
        f'Loaded {path} (weights under {describe_location(checkpoint, prefix, weights)}) into '
        f'{type(backbone).__name__}: {len(report["loaded"])} loaded, '
        f'{len(report["converted"])} converted {report["converted"]}, '
        f'{len(report["resized"])} resized {report["resized"]}, '
        f'{len(report["new"])} newly initialised {report["new"]}, '
        f'{len(report["dropped"])} dropped (classifier and rebuilt buffers)',
        logger='current')
    return report
