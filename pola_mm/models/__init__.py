"""Pola-Swin and Pola-PVT backbones and their building blocks."""
from .pola_attention import PolaLinearAttention
from .pola_pvt import PolaPVT
from .pola_swin import PolaSwinTransformer
from .window_attention import ShiftWindowAttention

__all__ = ['PolaLinearAttention', 'PolaPVT', 'PolaSwinTransformer', 'ShiftWindowAttention']
