"""Pola-Swin and Pola-PVT backbones, their building blocks and classifier support."""
from .classifiers import OfficialClassifierCheckpointHook
from .pola_attention import PolaLinearAttention
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwinTransformer
from .window_attention import ShiftWindowAttention

__all__ = [
    'OfficialClassifierCheckpointHook', 'PolaLinearAttention', 'PolaPVT',
    'PolaSwinTransformer', 'ShiftWindowAttention'
]
