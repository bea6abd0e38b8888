"""Argument checks and helpers shared by the Pola backbones."""
from typing import Dict, Sequence, Tuple, Union

from torch import Tensor, nn


def parse_arch(arch_zoo: Dict[str, Dict], arch: Union[str, Dict], per_stage: Sequence[str],
               scalars: Sequence[str], optional: Dict, num_stages: int) -> Dict:
    """Validate ``arch`` (a name of ``arch_zoo`` or a dict) and return a complete dict.

    ``per_stage`` keys need ``num_stages`` positive ints, ``scalars`` keys a positive int;
    ``optional`` gives defaults for keys a custom dict may leave out.
    """
    if isinstance(arch, str):
        if arch not in arch_zoo:
            raise ValueError(f'unknown arch {arch!r}; choose one of {sorted(arch_zoo)} '
                             'or pass a dict')
        arch = arch_zoo[arch]
    if not isinstance(arch, dict):
        raise ValueError(f'arch must be a str or a dict, got {type(arch).__name__}')
    allowed = set(per_stage) | set(scalars) | set(optional)
    unknown = set(arch) - allowed
    missing = (set(per_stage) | set(scalars)) - set(optional) - set(arch)
    if unknown or missing:
        raise ValueError(f'malformed arch dict: missing keys {sorted(missing)}, unknown keys '
                         f'{sorted(unknown)} (expected {sorted(allowed)})')
    parsed = {**optional, **arch}
    for key in per_stage:
        value = parsed[key]
        if (not isinstance(value, (list, tuple)) or len(value) != num_stages
                or not all(isinstance(v, int) and v > 0 for v in value)):
            raise ValueError(f'malformed arch dict: {key!r} must be {num_stages} positive ints, '
                             f'got {value!r}')
        parsed[key] = list(value)
    for key in scalars:
        if not isinstance(parsed[key], int) or parsed[key] <= 0:
            raise ValueError(f'malformed arch dict: {key!r} must be a positive int, '
                             f'got {parsed[key]!r}')
    return parsed


def check_out_indices(out_indices: Sequence[int], num_stages: int) -> Tuple[int, ...]:
    """Validated, sorted tuple of output stage indices."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    indices = tuple(out_indices)
    if not indices or any(not isinstance(i, int) or not 0 <= i < num_stages for i in indices):
        raise ValueError(f'out_indices must be ints in [0, {num_stages - 1}], got {out_indices}')
    return tuple(sorted(set(indices)))


def check_frozen_stages(frozen_stages: int, num_stages: int) -> int:
    if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'frozen_stages must be an int in [-1, {num_stages}], '
                         f'got {frozen_stages!r}')
    return frozen_stages


def check_image(x: Tensor, min_size: int) -> None:
    """Reject inputs that are not (B, C, H, W) images of at least ``min_size`` pixels."""
    if x.dim() != 4:
        raise ValueError(f'expected a (B, C, H, W) image batch, got shape {tuple(x.shape)}')
    if min(x.shape[2:]) < min_size:
        raise ValueError(f'image size {tuple(x.shape[2:])} is smaller than the backbone\'s '
                         f'total stride {min_size}; resize or pad the input')


def freeze_module(module: nn.Module) -> None:
    """Put ``module`` in eval mode and stop gradients to its parameters."""
    module.eval()
    for param in module.parameters():
        param.requires_grad = False
