"""The ``pola_mm`` registry scope.

``MODELS`` is a child of mmengine's root model registry with scope ``pola_mm``, so
MMDetection, MMSegmentation and MMPretrain (whose registries are children of the same
root) resolve ``type='pola_mm.PolaSwinTransformer'`` through it.

A bare ``type='PolaSwinTransformer'`` is looked up in the caller's scope and then in its
parents, never in sibling scopes. :func:`register_model` therefore also records the
class under its bare name in mmengine's root registry, so that the bare name builds from
every OpenMMLab library once ``pola_mm`` is imported.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='pola_mm', locations=['pola_mm.models'])


def register_model(cls: type) -> type:
    """Register ``cls`` in the ``pola_mm`` scope and under its bare name in the root."""
    MODELS.register_module(module=cls)
    MMENGINE_MODELS.register_module(module=cls)
    return cls
