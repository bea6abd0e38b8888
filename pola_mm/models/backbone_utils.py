"""The base class, argument checks and helpers shared by the Pola backbones."""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule, initialize
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from ..checkpoint import load_pretrained_backbone

TRUNC_NORMAL_TABLES = ('pos_embed', 'relative_position_bias_table')
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location', 'weights')


class PolaBackbone(BaseModule):
    """What the Pola backbones share: initialisation (official, or a released checkpoint
    through ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``, with
    ``prefix='backbone'`` from a whole detector's or segmentor's checkpoint and
    ``map_location`` as MMEngine's), the official-name conversion hook, and
    ``frozen_stages``.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH, weights='state_dict_ema')`` takes
    the EMA weights of a training file instead of its ``'model'`` weights.

    ``frozen_stages`` means the same in every family: -1 freezes nothing, 0 the stem
    (:meth:`stem_parts`), k >= 1 the stem and stages 1..k (:meth:`stage_parts`); frozen
    parts stop their gradients and stay in eval mode when the model trains.
    Subclasses set ``frozen_stages`` and implement :meth:`stem_parts` and
    :meth:`stage_parts`.
    """

    #: key prefixes of the backbone that released files lack (newly initialised)
    new_key_prefixes: Tuple[str, ...] = ()
    #: anchored pattern of the released classifiers' keys the backbone has no place for
    classifier_keys: str = r'^head\.'

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor],
                                    report: Optional[Dict[str, List[str]]] = None
                                    ) -> Dict[str, Tensor]:
        """Official backbone weights (classifier and rebuilt buffers already dropped) ->
        this backbone's names; renamed keys go to ``report['converted']``, keys it has no
        place for to ``report['dropped']``. The official names are the backbone's own
        unless a family says otherwise."""
        return dict(state_dict)

    def init_weights(self):
        """Initialise from ``init_cfg`` (a dict or a list of dicts, as MMEngine's):

        * :meth:`official_init`, unless a ``Pretrained`` entry is all there is;
        * then the other entries, MMEngine's initialisers (e.g.
          ``dict(type='Constant', layer='Linear', val=0)``), over the official init;
        * last the ``Pretrained`` entry, loaded by :func:`load_pretrained_backbone`
          (:data:`PRETRAINED_KEYS`, plus ``weights`` to name the checkpoint entry to take,
          e.g. ``'state_dict_ema'``).
        """
        pretrained, others = split_init_cfg(self.init_cfg)
        if pretrained is None or others:
            self.official_init()
            if others:
                initialize(self, others)
        if pretrained is not None:
            load_pretrained_backbone(self, pretrained['checkpoint'], pretrained.get('prefix'),
                                     pretrained.get('map_location', 'cpu'),
                                     pretrained.get('weights'))

    def official_init(self):
        """The authors' initialisation: truncated normal (std .02) for Linear weights and
        positional tables, zero biases, LayerNorm 1/0; Pola ``scale``, ``power`` and
        ``positional_encoding`` stay zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.rsplit('.', 1)[-1].startswith(TRUNC_NORMAL_TABLES):
                trunc_normal_(param, std=.02)

    def stem_parts(self) -> List[Union[nn.Module, nn.Parameter]]:
        """What ``frozen_stages=0`` freezes: the first patch embedding (with its
        positional table where there is one)."""
        raise NotImplementedError

    def stage_parts(self, index: int) -> List[Union[nn.Module, nn.Parameter]]:
        """What stage ``index`` (0-based) adds to the frozen parts, as the family groups
        its modules: its downsampling, blocks and output norm."""
        raise NotImplementedError

    def frozen_parts(self) -> List[Union[nn.Module, nn.Parameter]]:
        """The modules and parameters ``frozen_stages`` freezes."""
        if self.frozen_stages < 0:
            return []
        parts = list(self.stem_parts())
        for index in range(self.frozen_stages):
            parts.extend(self.stage_parts(index))
        return parts

    def _freeze_stages(self):
        for part in self.frozen_parts():
            if isinstance(part, nn.Parameter):
                part.requires_grad = False
            else:
                freeze_module(part)

    def train(self, mode: bool = True):
        """Set the mode, keeping frozen stages in eval."""
        super().train(mode)
        self._freeze_stages()
        return self


InitCfg = Union[None, Mapping, Sequence[Mapping]]


def split_init_cfg(init_cfg: InitCfg) -> Tuple[Optional[Mapping], List[Mapping]]:
    """``init_cfg`` (None, a dict or a list of dicts, as MMEngine takes it) -> its
    ``Pretrained`` entry (checked: the keys of :data:`PRETRAINED_KEYS`, ``checkpoint``
    required) or None, and the other entries.

    Raises:
        ValueError: naming ``init_cfg`` when an entry is not a dict with a ``type``, when
            there is more than one ``Pretrained`` entry, or when that entry is malformed.
    """
    entries = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, Mapping) \
        else list(init_cfg) if isinstance(init_cfg, (list, tuple)) else None
    if entries is None or not all(isinstance(e, Mapping) and 'type' in e for e in entries):
        raise ValueError(f'malformed init_cfg {init_cfg!r}: it takes a dict with a type, '
                         'or a list of them')
    pretrained = [e for e in entries if e['type'] == 'Pretrained']
    if len(pretrained) > 1:
        raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one')
    for entry in pretrained:
        if set(entry) - set(PRETRAINED_KEYS) or 'checkpoint' not in entry:
            raise ValueError(f'malformed Pretrained init_cfg {dict(entry)}: it takes '
                             f'{PRETRAINED_KEYS}, with checkpoint required')
    return (pretrained[0] if pretrained else None,
            [e for e in entries if e['type'] != 'Pretrained'])


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
                or not all(is_positive_int(v) for v in value)):
            raise ValueError(f'malformed arch dict: {key!r} must be {num_stages} positive ints, '
                             f'got {value!r}')
        parsed[key] = list(value)
    for key in scalars:
        if not is_positive_int(parsed[key]):
            raise ValueError(f'malformed arch dict: {key!r} must be a positive int, '
                             f'got {parsed[key]!r}')
    return parsed


def is_positive_int(value) -> bool:
    """Whether ``value`` is an int (not a bool) above 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_int(name: str, value: int, multiple_of: int = 1) -> int:
    """``value`` if it is a positive int (a multiple of ``multiple_of``), else a ValueError
    naming the argument ``name``."""
    if not is_positive_int(value) or value % multiple_of:
        multiple = f' multiple of {multiple_of}' if multiple_of > 1 else ''
        raise ValueError(f'{name} must be a positive int{multiple}, got {value!r}')
    return value


def check_in_channels(in_channels: int) -> int:
    """``in_channels`` if it is a positive int, else a ValueError naming it."""
    return check_positive_int('in_channels', in_channels)


def mlp_hidden_dims(embed_dims: int, mlp_ratio: float) -> int:
    """Hidden channels ``int(embed_dims * mlp_ratio)`` of a block's MLP; a ValueError names an
    ``mlp_ratio`` that is no number or leaves the MLP no hidden channel."""
    hidden = (int(embed_dims * mlp_ratio) if isinstance(mlp_ratio, (int, float)) and
              not isinstance(mlp_ratio, bool) else 0)
    if hidden < 1:
        raise ValueError(f'mlp_ratio must be a number giving the MLP of {embed_dims}-channel '
                         f'blocks at least one hidden channel, got {mlp_ratio!r}')
    return hidden


def check_out_indices(out_indices: Sequence[int], num_stages: int) -> Tuple[int, ...]:
    """Validated, sorted tuple of output stage indices."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    indices = tuple(out_indices)
    if not indices or any(not isinstance(i, int) or isinstance(i, bool) or
                          not 0 <= i < num_stages for i in indices):
        raise ValueError(f'out_indices must be ints in [0, {num_stages - 1}], got {out_indices}')
    return tuple(sorted(set(indices)))


def check_frozen_stages(frozen_stages: int, num_stages: int) -> int:
    if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or \
            not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'frozen_stages must be an int in [-1, {num_stages}], '
                         f'got {frozen_stages!r}')
    return frozen_stages


def stochastic_depth_rates(drop_path_rate: float, depths: Sequence[int]) -> List[float]:
    """The drop-path rate of each block, rising linearly from 0 to ``drop_path_rate``
    over ``sum(depths)`` blocks; the rate must lie in [0, 1)."""
    if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or \
            not 0 <= drop_path_rate < 1:
        raise ValueError(f'drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}')
    return torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()


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
