"""Which weights of a checkpoint dict to use, and the official keys a backbone never takes.

Released PolaFormer files keep the weights under ``'model'`` (next to the optimizer state
and the pickled config), MMEngine's under ``'state_dict'``, converted files may be a bare
state dict. EMA weights (``'state_dict_ema'``) are never picked silently: only when a
caller names them (``weights='state_dict_ema'``).
"""
import re
from typing import Dict, List, Mapping, Optional

from torch import Tensor

WEIGHT_KEYS = ('model', 'state_dict')  # in order of preference; never 'state_dict_ema'
CLASSIFIER_KEYS = r'^head\.'  # PolaFormer's classifiers; PolaFormer++ adds proj and norm
REBUILT_BUFFERS = ('relative_position_index', 'attn_mask')  # rebuilt per input


def weights_location(checkpoint: Mapping) -> Optional[str]:
    """Key holding the model weights ('model', then 'state_dict'), None for a bare dict."""
    return next((k for k in WEIGHT_KEYS if isinstance(checkpoint.get(k), Mapping)), None)


def describe_location(checkpoint: Mapping, prefix: Optional[str] = None,
                      weights: Optional[str] = None) -> str:
    """Where :func:`select_model_weights` takes the weights from, in words."""
    location = weights or weights_location(checkpoint)
    source = repr(location) if location else 'the top level'
    return source if prefix is None else f'{source} with the prefix {prefix!r}'


def select_model_weights(checkpoint: Mapping, path: str = '<checkpoint>',
                         prefix: Optional[str] = None,
                         weights: Optional[str] = None) -> Dict[str, Tensor]:
    """Weights of a checkpoint: under ``weights`` if given (e.g. ``'state_dict_ema'``),
    else under 'model', else 'state_dict', else the dict itself.

    A ``module.`` prefix is removed. With ``prefix`` (e.g. ``'backbone'`` for a whole
    detector's checkpoint) only the keys under it are kept, without it; otherwise an
    optional ``backbone.`` prefix is removed.

    Raises:
        RuntimeError: naming ``path`` when the file only holds EMA weights (and
            ``weights`` does not name them), when it has no ``weights`` entry, when the
            weights contain non-tensor entries, or when nothing lies under ``prefix``.
    """
    if weights is not None and not isinstance(checkpoint.get(weights), Mapping):
        entries = sorted(k for k, v in checkpoint.items() if isinstance(v, Mapping))
        raise RuntimeError(f'checkpoint {path} has no weights under {weights!r}; its '
                           f'entries holding dicts are {entries}')
    location = weights or weights_location(checkpoint)
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
                                dropped: Optional[List[str]] = None,
                                classifier_keys: str = CLASSIFIER_KEYS) -> Dict[str, Tensor]:
    """Official weights without the classifier (keys matching the anchored pattern
    ``classifier_keys``: ``head.*``, for PolaFormer++ also the top-level ``proj.*`` and
    ``norm.*``, never ``attn.proj`` or ``downsample.norm``) and the buffers the backbones
    rebuild per input; the dropped keys are appended to ``dropped`` if given."""
    classifier = re.compile(classifier_keys)
    kept = {}
    for key, value in state_dict.items():
        if classifier.match(key) or key.endswith(REBUILT_BUFFERS):
            if dropped is not None:
                dropped.append(key)
        else:
            kept[key] = value
    return kept
