"""Which weights of a checkpoint dict to use, and the official keys a backbone never takes.

Released PolaFormer files keep the weights under ``'model'`` (next to the optimizer state
and the pickled config), MMEngine's under ``'state_dict'``, converted files may be a bare
state dict. EMA weights (``'state_dict_ema'``) are never picked silently.
"""
import re
from typing import Dict, List, Mapping, Optional

from torch import Tensor

WEIGHT_KEYS = ('model', 'state_dict')  # in order of preference; never 'state_dict_ema'
CLASSIFIER_PREFIX = 'head.'
REBUILT_BUFFERS = ('relative_position_index', 'attn_mask')  # rebuilt per input


def weights_location(checkpoint: Mapping) -> Optional[str]:
    """Key holding the model weights ('model', then 'state_dict'), None for a bare dict."""
    return next((k for k in WEIGHT_KEYS if isinstance(checkpoint.get(k), Mapping)), None)


def describe_location(checkpoint: Mapping, prefix: Optional[str] = None) -> str:
    """Where :func:`select_model_weights` takes the weights from, in words."""
    location = weights_location(checkpoint)
    source = repr(location) if location else 'the top level'
    return source if prefix is None else f'{source} with the prefix {prefix!r}'


def select_model_weights(checkpoint: Mapping, path: str = '<checkpoint>',
                         prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """Weights of a checkpoint: under 'model', else 'state_dict', else the dict itself.

    A ``module.`` prefix is removed. With ``prefix`` (e.g. ``'backbone'`` for a whole
    detector's checkpoint) only the keys under it are kept, without it; otherwise an
    optional ``backbone.`` prefix is removed.

    Raises:
        RuntimeError: naming ``path`` when the file only holds EMA weights, when the
            weights contain non-tensor entries, or when nothing lies under ``prefix``.
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


def drop_classifier_and_buffers(state_dict: Mapping[str, Tensor],
                                dropped: Optional[List[str]] = None) -> Dict[str, Tensor]:
    """Official weights without the classifier (``head.*``) and the buffers the backbones
    rebuild per input; the dropped keys are appended to ``dropped`` if given."""
    kept = {}
    for key, value in state_dict.items():
        if key.startswith(CLASSIFIER_PREFIX) or key.endswith(REBUILT_BUFFERS):
            if dropped is not None:
                dropped.append(key)
        else:
            kept[key] = value
    return kept
