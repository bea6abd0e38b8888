"""Pola-Swin and Pola-PVT backbones, their building blocks, and the released ImageNet
classifiers as timm models (registered on import)."""
from .pola_attention import PolaLinearAttention
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwinTransformer
from .released import BACKBONE_TYPES, released_backbone
from .timm_classifier import PolaFormerClassifier
from .window_attention import ShiftWindowAttention

__all__ = [
    'BACKBONE_TYPES', 'PolaFormerClassifier', 'PolaLinearAttention', 'PolaPVT',
    'PolaSwinTransformer', 'ShiftWindowAttention', 'released_backbone'
]
