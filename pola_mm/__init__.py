"""pola_mm: PolaFormer backbones for MMDetection, MMSegmentation and MMPretrain.

Importing the package registers every model in the ``pola_mm`` registry scope.
"""
from .version import __version__
from . import models  # noqa: F401  (registers the backbones)

__all__ = ['__version__']
