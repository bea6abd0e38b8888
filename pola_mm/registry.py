"""The ``pola_mm`` registry scope.

Each registry here is a child, with scope ``pola_mm``, of the matching mmengine root
registry. MMDetection, MMSegmentation and MMPretrain register their own scopes under the
same roots, so any of them resolves ``type='pola_mm.PolaSwinTransformer'`` or
``runner_type='pola_mm.PolaRunner'`` through this scope (mmengine even imports
``pola_mm.registry`` on demand for an unknown scope, and each registry imports its
``locations`` when first searched).

Engine pieces (hooks, runner, transforms) live in this scope only, so that their names
(``FiniteLossHook``, ...) cannot collide with another plugin's in the namespace every
plugin shares. The backbones' own distinctive names are also recorded in mmengine's root
model registry by :func:`register_backbone`, so that a bare
``type='PolaSwinTransformer'`` builds from every OpenMMLab library once ``pola_mm`` is
imported (a bare name is looked up in the caller's scope and its parents, never in
sibling scopes).
"""
from mmengine import registry as mmengine_registry
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=mmengine_registry.MODELS,
    scope='pola_mm',
    locations=['pola_mm.models'])
TRANSFORMS = Registry(
    'transform',
    parent=mmengine_registry.TRANSFORMS,
    scope='pola_mm',
    locations=['pola_mm.datasets'])
HOOKS = Registry(
    'hook',
    parent=mmengine_registry.HOOKS,
    scope='pola_mm',
    locations=['pola_mm.engine'])
RUNNERS = Registry(
    'runner',
    parent=mmengine_registry.RUNNERS,
    scope='pola_mm',
    locations=['pola_mm.engine'])


def register_backbone(cls: type) -> type:
    """Register a backbone class in the ``pola_mm`` scope and, under its bare name, in
    mmengine's root model registry."""
    MODELS.register_module(module=cls)
    mmengine_registry.MODELS.register_module(module=cls)
    return cls
