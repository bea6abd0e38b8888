"""Attention cores shared by the backbones."""
from .polarity_attention import polarity_linear_attention

__all__ = ['polarity_linear_attention']
