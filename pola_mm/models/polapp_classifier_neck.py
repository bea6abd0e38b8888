"""``pola_mm.PolaPPClassifierNeck``: the layers of the PolaFormer++ ImageNet classifiers
between the backbone and the linear head."""
from typing import Optional, Sequence, Tuple, Union

from mmengine.logging import print_log
from mmengine.model import BaseModule, initialize
from torch import Tensor, nn

from ..checkpoint import (describe_location, load_into, official_neck_weights, read_checkpoint,
                          select_model_weights)
from ..registry import MODELS
from .backbone_utils import split_init_cfg
from .polapp import PolaPP


@MODELS.register_module()
class PolaPPClassifierNeck(BaseModule):
    """1x1 conv, BatchNorm, SiLU, global average pooling: the authors' ``proj``, ``norm``,
    swish and pool, ahead of their ``head`` (a :class:`LinearClsHead` in MMPretrain).

    The last stage map must be the raw one (``PolaPP(out_norms=False)``), as the authors'
    classifier sees it. The weights keep the authors' names (``proj``, ``norm``).

    Args:
        in_channels (int): Channels C of the last stage map.
        out_channels (int): Width P of the projection (2048; 2560 for b5).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)`` takes
            ``proj.*`` and ``norm.*`` of a released classifier file (its ``'model'``
            weights; ``weights='state_dict_ema'`` for the EMA ones; ``prefix='neck'`` for a
            whole MMPretrain checkpoint). Defaults to the authors' initialisation
            (truncated normal std 0.02, zero bias for the conv; BatchNorm 1/0).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int = 2048,
                 init_cfg: Optional[dict] = dict(
                     type='TruncNormal', layer='Conv2d', std=.02, bias=0.)):
        super().__init__(init_cfg=init_cfg)
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU()

    def project(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, P, H, W)."""
        return self.act(self.norm(self.proj(x)))

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]) -> Tuple[Tensor, ...]:
        """A (B, C, H, W) map or a tuple of them -> a tuple of (B, P) pooled features."""
        inputs = (inputs, ) if isinstance(inputs, Tensor) else inputs
        return tuple(self.project(x).mean(dim=(2, 3)) for x in inputs)

    def init_weights(self):
        """Load a ``Pretrained`` init_cfg entry (see :func:`split_init_cfg`) after any
        other entries; without one, MMEngine's init_cfg handling."""
        pretrained, others = split_init_cfg(self.init_cfg)
        if pretrained is None:
            super().init_weights()
            return
        if others:
            initialize(self, others)
        path, prefix, entry = (pretrained['checkpoint'], pretrained.get('prefix'),
                               pretrained.get('weights'))
        checkpoint = read_checkpoint(path, pretrained.get('map_location', 'cpu'))
        weights = select_model_weights(checkpoint, path, prefix, entry)
        try:
            load_into(self, official_neck_weights(weights, PolaPP.classifier_keys))
        except RuntimeError as error:
            raise RuntimeError(f'{path}: {error}') from None
        print_log(f'Loaded proj and norm of {path} (weights under '
                  f'{describe_location(checkpoint, prefix, entry)}) into '
                  f'{type(self).__name__}', logger='current')
