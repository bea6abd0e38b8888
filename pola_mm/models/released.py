"""The backbones of the released models (:data:`pola_mm.variants.RELEASED`) by name."""
from typing import Dict, Type

from ..variants import POLAPP, PVT, SWIN, released_model
from .backbone_utils import PolaBackbone
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwinTransformer
from .polapp import PolaPP

BACKBONE_TYPES: Dict[str, Type[PolaBackbone]] = {
    SWIN: PolaSwinTransformer, PVT: PolaPVT, POLAPP: PolaPP}


def released_backbone(name: str, **kwargs) -> PolaBackbone:
    """The backbone of the released model ``name`` (e.g. ``'pola_swin_base_384'``) with its
    arch and pretraining size; ``kwargs`` add or override backbone arguments."""
    model = released_model(name)
    return BACKBONE_TYPES[model.family](**{**model.backbone_cfg(), **kwargs})
