"""Pola-Swin, Pola-PVT and PolaFormer++ (PolaPP) backbones, their building blocks, and
the released ImageNet classifiers as timm models (registered on import)."""
from .pola_attention import PolaLinearAttention
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwinTransformer
from .polapp import PolaPP
from .polapp_attention import PolaPPLinearAttention, RoPESoftmaxAttention
from .polapp_classifier_neck import PolaPPClassifierNeck
from .released import BACKBONE_TYPES, released_backbone
from .timm_classifier import PolaFormerClassifier
from .window_attention import ShiftWindowAttention

__all__ = [
    'BACKBONE_TYPES', 'PolaFormerClassifier', 'PolaLinearAttention', 'PolaPP',
    'PolaPPClassifierNeck', 'PolaPPLinearAttention', 'PolaPVT', 'PolaSwinTransformer',
    'RoPESoftmaxAttention', 'ShiftWindowAttention', 'released_backbone'
]
