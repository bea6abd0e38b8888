"""The backbones build once registered: from MMDetection, MMSegmentation and MMPretrain
configs (scoped and bare type names) and from plain mmengine."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import pola_mm  # noqa: F401  (registers the backbones)
from pola_mm.models import PolaPVT, PolaSwinTransformer

SMALL = {
    'PolaSwinTransformer': dict(arch=dict(embed_dims=16, depths=[1, 1, 2, 1],
                                          num_heads=[1, 2, 2, 4]), pretrain_img_size=64),
    'PolaPVT': dict(arch=dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                              num_heads=[1, 1, 1, 2], mlp_ratios=[2, 2, 2, 2]),
                    pretrain_img_size=64),
}
CLASSES = {'PolaSwinTransformer': PolaSwinTransformer, 'PolaPVT': PolaPVT}
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def library_registry(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
@pytest.mark.parametrize('name', sorted(SMALL))
@pytest.mark.parametrize('prefix', ['pola_mm.', ''])
def test_backbone_builds_from_each_library(scope, name, prefix):
    registry = library_registry(scope)
    cfg = Config(dict(default_scope=scope,
                      backbone=dict(type=prefix + name, **SMALL[name])))
    with DefaultScope.overwrite_default_scope(scope):
        backbone = registry.build(cfg.backbone)
    assert type(backbone) is CLASSES[name]
    outs = backbone(torch.randn(1, 3, 64, 96))
    assert [o.shape[-2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_builds_from_plain_mmengine():
    from mmengine.registry import MODELS
    assert type(MODELS.build(dict(type='PolaPVT', **SMALL['PolaPVT']))) is PolaPVT
    assert type(MODELS.build(dict(type='pola_mm.PolaSwinTransformer',
                                  **SMALL['PolaSwinTransformer']))) is PolaSwinTransformer


def test_detector_config_with_custom_imports_builds_in_a_fresh_process():
    """What a user of mmdet's own tools does: custom_imports + the scoped type."""
    script = '''
from mmengine.config import Config
from mmdet.utils import register_all_modules
from mmdet.registry import MODELS
register_all_modules()
cfg = Config(dict(
    custom_imports=dict(imports=['pola_mm'], allow_failed_imports=False),
    model=dict(type='RetinaNet',
               data_preprocessor=dict(type='DetDataPreprocessor'),
               backbone=dict(type='PolaPVT', arch='tiny', out_indices=(1, 2, 3)),
               neck=dict(type='FPN', in_channels=[128, 320, 512], out_channels=32,
                         start_level=0, add_extra_convs='on_input', num_outs=5),
               bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=32,
                              feat_channels=32,
                              anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                                    scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                                    strides=[8, 16, 32, 64, 128]),
                              bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                              loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                              loss_bbox=dict(type='L1Loss')))))
from mmengine.utils import import_modules_from_strings
import_modules_from_strings(**cfg.custom_imports)
model = MODELS.build(cfg.model)
print(type(model.backbone).__module__, type(model.backbone).__name__)
'''
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith('pola_mm.models.pola_pvt PolaPVT')


ENGINE_CLASSES = ('AtomicCheckpointHook', 'FiniteLossHook', 'RandomStateHook',
                  'OfficialClassifierCheckpointHook', 'PolaRunner', 'LoadCheckedSegAnnotations')


def test_engine_classes_live_in_the_pola_mm_scope_only():
    """Hooks, the runner and transforms resolve as ``pola_mm.X`` and not bare from
    mmengine's root registries, which every plugin shares; the backbones resolve both."""
    from mmengine import registry as root

    from pola_mm import registry
    roots = (root.HOOKS, root.RUNNERS, root.TRANSFORMS, root.MODELS)
    for name in ENGINE_CLASSES:
        assert all(name not in r.module_dict for r in roots), name
    assert registry.HOOKS.get('pola_mm.FiniteLossHook') is not None
    assert root.HOOKS.get('pola_mm.RandomStateHook') is not None
    assert root.RUNNERS.get('pola_mm.PolaRunner') is not None
    assert root.TRANSFORMS.get('pola_mm.LoadCheckedSegAnnotations') is not None
    for backbone in CLASSES:
        assert root.MODELS.get(backbone) is root.MODELS.get(f'pola_mm.{backbone}')


def test_runner_type_builds_the_pola_runner(tmp_path):
    from mmengine.registry import RUNNERS

    from pola_mm.engine import PolaRunner
    cfg = Config(dict(
        runner_type='pola_mm.PolaRunner', model=dict(type='PolaPVT', **SMALL['PolaPVT']),
        work_dir=str(tmp_path), default_scope='mmengine'))
    runner = RUNNERS.build(cfg)
    assert type(runner) is PolaRunner


def test_every_config_names_the_pola_runner():
    import glob
    configs = [path for path in glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                                          recursive=True) if '_base_' not in path]
    assert len(configs) > 20
    for path in configs:
        cfg = Config.fromfile(path)
        assert cfg.runner_type == 'pola_mm.PolaRunner', path
        assert 'pola_mm' in cfg.custom_imports['imports'], path
