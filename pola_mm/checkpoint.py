"""Reading released PolaFormer checkpoints safely and loading them into pola_mm models.

Every file is read with torch's weights-only unpickler. The released training
checkpoints also pickle the authors' yacs ``CfgNode`` config (and numpy scalars); those
few names are mapped, for the duration of one load, to inert types (a ``CfgNode``
becomes an ``OrderedDict``), so no yacs import is needed and nothing from the file runs.
Checkpoints written by MMEngine (e.g. a classifier trained with ``tools/train.py``) are
read with the objects it pickles allowed (:mod:`pola_mm.engine.checkpoint_safety`).
Anything else that is not plain data is refused with an error naming the file.
"""
import collections
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from .engine.checkpoint_safety import read_checkpoint
from .models.pos_embed import resize_token_grid, square_grid_side

# Names the released checkpoints pickle besides tensors and builtins, with the inert
# types that stand in for them during a weights-only load.
RELEASED_CHECKPOINT_GLOBALS = [
    (collections.OrderedDict, 'yacs.config.CfgNode'),
    np.dtype,
    (np._core if hasattr(np, '_core') else np.core).multiarray.scalar,
    *{type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')},
]
WEIGHT_KEYS = ('model', 'state_dict')  # in order of preference; never 'state_dict_ema'
DROPPED_SUFFIXES = ('relative_position_index', 'attn_mask')  # buffers rebuilt per input
RESIZABLE = ('positional_encoding', 'relative_position_bias_table', 'pos_embed')


def load_checkpoint_file(path: str) -> Dict:
    """Read a checkpoint with weights-only unpickling; clear errors for bad files.

    Released files and those MMEngine writes (``tools/train.py``'s) are read; anything
    else that is not plain data is refused. An ``http(s)://`` URL is downloaded first
    (see :func:`pola_mm.engine.checkpoint_safety.local_checkpoint`).
    """
    if '://' not in path and not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    with torch.serialization.safe_globals(RELEASED_CHECKPOINT_GLOBALS):
        checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f'checkpoint {path} holds a {type(checkpoint).__name__}, '
                           'not a dict of weights')
    return checkpoint


def weights_location(checkpoint: Mapping) -> Optional[str]:
    """Key holding the model weights ('model', then 'state_dict'), None for a bare dict."""
    return next((k for k in WEIGHT_KEYS if isinstance(checkpoint.get(k), Mapping)), None)


def select_model_weights(checkpoint: Mapping, path: str = '<checkpoint>',
                         prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """Weights of a released file: under 'model', else 'state_dict', else the dict itself.

    A ``module.`` prefix is removed. With ``prefix`` (e.g. ``'backbone'`` for a whole
    detector's checkpoint) only the keys under it are kept, without it; otherwise an
    optional ``backbone.`` prefix is removed. EMA weights (``'state_dict_ema'``) are never
    picked silently.
    """
    location = weights_location(checkpoint)
    if location is None and 'state_dict_ema' in checkpoint:
        raise RuntimeError(f"checkpoint {path} only holds EMA weights ('state_dict_ema'); "
                           "save them under 'state_dict' if they are what you want")
    state_dict = checkpoint if location is None else checkpoint[location]
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise RuntimeError(f'checkpoint {path}: the weights under '
                           f'{location or "the top level"} contain non-tensor entries '
                           f'{not_tensors[:5]}')
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}
    if prefix is None:
        return {re.sub(r'^backbone\.', '', k): v for k, v in state_dict.items()}
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise RuntimeError(f'checkpoint {path} has no weights under the prefix {prefix!r}; '
                           f'its keys begin {sorted({k.split(".")[0] for k in state_dict})}')
    return selected


def load_official_state_dict(path: str, prefix: Optional[str] = None
                             ) -> Tuple[Dict[str, Tensor], Dict]:
    """All weights of a released file (classifier included), or those under ``prefix``
    (see :func:`select_model_weights`), and where they came from."""
    checkpoint = load_checkpoint_file(path)
    state_dict = select_model_weights(checkpoint, path, prefix)
    location = weights_location(checkpoint)
    info = dict(path=path, source=repr(location) if location else 'the top level',
                other_entries=sorted(k for k in checkpoint if k not in WEIGHT_KEYS)
                if location else [])
    return state_dict, info


def convert_official_state_dict(state_dict: Mapping[str, Tensor], backbone: nn.Module,
                                report: Optional[Dict[str, List[str]]] = None
                                ) -> Dict[str, Tensor]:
    """Map official key names onto a pola_mm backbone.

    Drops the classifier (``head.*``) and the buffers rebuilt per input. For Pola-Swin
    the official final ``norm`` becomes the last output's ``norm3`` (dropped when stage 3
    is not an output). Pola-PVT keeps every name.

    Args:
        state_dict: official weights (see :func:`select_model_weights`).
        backbone: a :class:`PolaSwinTransformer` or :class:`PolaPVT`.
        report: if given, its 'dropped' and 'converted' lists receive the keys.
    """
    from .models import PolaPVT, PolaSwinTransformer
    if not isinstance(backbone, (PolaSwinTransformer, PolaPVT)):
        raise TypeError(f'expected a Pola backbone, got {type(backbone).__name__}')
    is_swin = isinstance(backbone, PolaSwinTransformer)
    report = {} if report is None else report
    dropped, converted_keys = report.setdefault('dropped', []), report.setdefault(
        'converted', [])
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('head.') or key.endswith(DROPPED_SUFFIXES):
            dropped.append(key)
            continue
        if is_swin and key.startswith('norm.'):
            if not hasattr(backbone, 'norm3'):
                dropped.append(key)
                continue
            new_key = 'norm3.' + key[len('norm.'):]
            converted_keys.append(f'{key} -> {new_key}')
            key = new_key
        converted[key] = value
    return converted


def resize_to(name: str, value: Tensor, shape: torch.Size) -> Optional[Tensor]:
    """Resize a positional table to ``shape`` (bicubic, as the authors' 224->384
    recipe), or None when ``name`` is not a positional table or the shapes don't allow."""
    if not name.endswith(RESIZABLE) or value.dim() != len(shape):
        return None
    if name.endswith('relative_position_bias_table'):  # ((2w-1)^2, heads)
        if value.shape[1] != shape[1]:
            return None
        src, dst = square_grid_side(value.shape[0]), square_grid_side(shape[0])
        grid = value.float().T.reshape(1, -1, src, src)
        grid = F.interpolate(grid, size=(dst, dst), mode='bicubic', align_corners=False)
        return grid.reshape(-1, dst * dst).T.to(value.dtype)
    if value.shape[0] != 1 or value.shape[2] != shape[2]:  # (1, S*S, C)
        return None
    src, dst = square_grid_side(value.shape[1]), square_grid_side(shape[1])
    return resize_token_grid(value, (src, src), (dst, dst), 'bicubic')


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor],
              expected_new: Tuple[str, ...] = ()) -> Dict[str, List[str]]:
    """Load ``state_dict`` into ``model`` strictly, resizing positional tables.

    Raises:
        RuntimeError: naming unexpected keys, missing keys (other than those starting
            with ``expected_new``) and shape mismatches that are not resizable.

    Returns:
        dict: 'loaded', 'resized' and 'new' (initialised, not in the file) key lists.
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
        def listing(keys):
            return f'{len(keys)} ({", ".join(keys[:8])}{", ..." if len(keys) > 8 else ""})'
        raise RuntimeError(
            f'checkpoint does not fit {type(model).__name__}: unexpected keys '
            f'{listing(unexpected)}; missing keys {listing(missing)}; shape mismatches '
            f'{listing(mismatched)}. Is it a checkpoint of another architecture?')
    report['new'] = sorted(set(own) - set(to_load))
    model.load_state_dict(to_load, strict=False)
    return report


def load_model_checkpoint(model: nn.Module, path: str) -> Dict[str, List[str]]:
    """Load a checkpoint of a whole model (MMEngine's, as ``tools/train.py`` writes it:
    weights under 'state_dict', a ``module.`` prefix from distributed training removed)
    into ``model``, strictly (positional tables of another grid are resized, see
    :func:`load_into`). For tools that use a trained model outside a runner.

    Raises:
        FileNotFoundError / RuntimeError: naming ``path`` when it is missing, refused,
            unreadable, or does not fit ``model``.
    """
    checkpoint = load_checkpoint_file(path)
    weights = checkpoint.get('state_dict', checkpoint)
    weights = {re.sub(r'^module\.', '', key): value for key, value in weights.items()}
    try:
        return load_into(model, weights)
    except RuntimeError as error:
        raise RuntimeError(f'{path} does not fit the model: {error}') from None


def load_pretrained_backbone(backbone: nn.Module, path: str,
                             prefix: Optional[str] = None) -> Dict[str, List[str]]:
    """Load a released (or pola_mm) checkpoint into a Pola backbone and log a report.

    Keys of the backbone that the file lacks are only accepted for Pola-Swin's new output
    norms ``norm0``-``norm2``; the rest must match (positional tables are resized).
    ``prefix`` (e.g. ``'backbone'``) takes the backbone out of a whole model's checkpoint.
    """
    state_dict, info = load_official_state_dict(path, prefix)
    if prefix is not None:
        info['source'] += f' with the prefix {prefix!r}'
    conversion: Dict[str, List[str]] = {}
    converted = convert_official_state_dict(state_dict, backbone, conversion)
    expected_new = tuple(f'norm{i}.' for i in range(3))
    try:
        report = load_into(backbone, converted, expected_new)
    except RuntimeError as error:
        raise RuntimeError(f'{path}: {error}') from None
    report.update(conversion)
    print_log(
        f'Loaded {path} (weights under {info["source"]}) into {type(backbone).__name__}: '
        f'{len(report["loaded"])} loaded, {len(report["converted"])} converted '
        f'{report["converted"]}, {len(report["resized"])} resized {report["resized"]}, '
        f'{len(report["new"])} newly initialised {report["new"]}, '
        f'{len(report["dropped"])} dropped (classifier and rebuilt buffers)',
        logger='current')
    return report
