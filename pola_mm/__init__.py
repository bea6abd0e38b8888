"""pola_mm: PolaFormer and PolaFormer++ backbones for MMDetection, MMSegmentation and
MMPretrain.

Importing the package registers every model, transform, hook and runner in the
``pola_mm`` registry scope (see :mod:`pola_mm.registry`) and the released model names
(``pola_swin_tiny``, ..., ``pola_pvt_large``, ``polapp_b0``, ..., ``polapp_b5``) with
``timm.create_model``.
"""
from . import datasets, engine, models  # noqa: F401  (register their classes)
from .version import __version__

__all__ = ['__version__']
