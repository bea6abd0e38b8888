"""The ``pola_mm`` registry scope.

Each registry here is a child, with scope ``pola_mm``, of the matching mmengine root
registry. MMDetection, MMSegmentation and MMPretrain register their own scopes under the
same roots, so any of them resolves ``type='pola_mm.PolaSwinTransformer'`` through this
scope (mmengine even imports ``pola_mm.registry`` on demand for an unknown scope).

A bare ``type='PolaSwinTransformer'`` is looked up in the caller's scope and then in its
parents, never in sibling scopes. The ``register_*`` decorators therefore also record each
class under its bare name in mmengine's root registry, so the bare name builds from every
OpenMMLab library once ``pola_mm`` is imported. Each class is defined and decorated once.
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
DATASETS = Registry(
    'dataset',
    parent=mmengine_registry.DATASETS,
    scope='pola_mm',
    locations=['pola_mm.datasets'])
HOOKS = Registry(
    'hook',
    parent=mmengine_registry.HOOKS,
    scope='pola_mm',
    locations=['pola_mm.engine'])


def _register_in_scope_and_root(registry: Registry):

    def register(cls: type) -> type:
        registry.register_module(module=cls)
        registry.parent.register_module(module=cls)
        return cls

    return register


register_model = _register_in_scope_and_root(MODELS)
register_transform = _register_in_scope_and_root(TRANSFORMS)
register_dataset = _register_in_scope_and_root(DATASETS)
register_hook = _register_in_scope_and_root(HOOKS)
