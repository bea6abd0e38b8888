"""Attention cores shared by the backbones."""
from .pola_reference import plain_polapp_linear_attention, plain_polarity_attention
from .polapp_linear import POLAPP_ATTENTION_IMPLS, polapp_linear_attention
from .polarity_attention import ATTENTION_IMPLS, polarity_linear_attention
from .triton_compile import SUPPORTED_HEAD_DIMS

__all__ = [
    'ATTENTION_IMPLS', 'POLAPP_ATTENTION_IMPLS', 'SUPPORTED_HEAD_DIMS',
    'plain_polapp_linear_attention', 'plain_polarity_attention', 'polapp_linear_attention',
    'polarity_linear_attention'
]
