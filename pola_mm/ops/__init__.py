"""Attention cores shared by the backbones."""
from .pola_reference import plain_polarity_attention
from .polarity_attention import ATTENTION_IMPLS, polarity_linear_attention
from .triton_compile import SUPPORTED_HEAD_DIMS

__all__ = [
    'ATTENTION_IMPLS', 'SUPPORTED_HEAD_DIMS', 'plain_polarity_attention',
    'polarity_linear_attention'
]
