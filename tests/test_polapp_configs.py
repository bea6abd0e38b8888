"""The PolaFormer++ (PolaPP) detection and segmentation configs: the authors' settings
(design note, section 5), no parameter left without a gradient (DDP without
find_unused_parameters), and MMDetection's and MMSegmentation's own training entries on a
user config that inherits one and adds only ``custom_imports`` and generated data.

Every config also trains 2 iterations and is tested through tools/train.py and
tools/test.py in test_tools_detection.py and test_segmentation.py (parametrized over
them), and builds with its released arch in test_config_builds_with_its_released_backbone.
"""
import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch.nn.modules.batchnorm import _BatchNorm

import test_segmentation
import test_tools_detection
from pola_mm.variants import ARCHS
from test_library_tools import USER_IMPORTS, nested, run_library_tool
from test_segmentation import SMALL_DATA, SMALL_MODELS, SMALL_SCALES
from test_tools_detection import REPO, TINY_POLAPP_ARCH, _narrow_head_options, small_options

ade_root = test_segmentation.ade_root  # fixtures: generated ADE20K- and COCO-format data
shapes_root = test_tools_detection.shapes_root
SEG_DIR = test_segmentation.CONFIG_DIR
DET_DIR = osp.join(REPO, 'configs', 'detection')
DET_CONFIGS = sorted(glob.glob(osp.join(DET_DIR, '*_polapp-*.py')))
SEG_CONFIGS = sorted(glob.glob(osp.join(SEG_DIR, '*_polapp-*.py')))
RELEASED_DROP_PATH = {'b0': 0.1, 'b1': 0.1, 'b2': 0.1, 'b3': 0.15, 'b4': 0.4, 'b5': 0.55}


def _package_config(package, path: str) -> Config:
    """A config shipped with an OpenMMLab package (what ``pkg::path`` names in _base_)."""
    return Config.fromfile(osp.join(osp.dirname(package.__file__), '.mim', 'configs', path))


def _unscoped(node):
    """``node`` without the ``_scope_`` keys that inheriting across packages adds."""
    if isinstance(node, dict):
        return {k: _unscoped(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(_unscoped(v) for v in node)
    return node


def _variant(config: str) -> str:
    return re.search(r'_polapp-(b\d)_', osp.basename(config)).group(1)


def test_the_configs_of_the_authors_runs_are_all_here():
    names = {osp.basename(c) for c in DET_CONFIGS + SEG_CONFIGS}
    assert names == {
        *(f'mask-rcnn_polapp-b{v}_fpn_1x_coco.py' for v in (2, 3, 4, 5)),
        *(f'mask-rcnn_polapp-b{v}_fpn_ms-crop-3x_coco.py' for v in (2, 3, 4)),
        *(f'retinanet_polapp-b{v}_fpn_1x_coco.py' for v in (2, 3)),
        *(f'lightham_polapp-b{v}_8xb8-160k_ade20k-512x512.py' for v in (1, 2, 3)),
    }


@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_metafile_and_readme_list_every_config_without_numbers(task):
    """The authors publish no COCO / ADE20K numbers for PolaFormer++: no Results."""
    import yaml
    configs = DET_CONFIGS if task == 'detection' else SEG_CONFIGS
    with open(osp.join(REPO, 'configs', task, 'metafile.yml')) as f:
        models = {m['Name']: m for m in yaml.safe_load(f)['Models']}
    with open(osp.join(REPO, 'configs', task, 'README.md')) as f:
        readme = f.read()
    for config in configs:
        name = osp.basename(config)[:-3]
        model = models[name]
        assert model['Config'] == f'configs/{task}/{name}.py'
        assert model['In Collection'] == f'PolaFormerPP-{task.capitalize()}'
        assert model['Weights'] == f'checkpoints/polapp_{_variant(config)}.pth'
        assert 'Results' not in model
        row = next(line for line in readme.splitlines() if f'[config]({name}.py)' in line)
        assert row.startswith(f'| PolaPP-{_variant(config)} |') and '| - |' in row, row


def _check_backbone(cfg, variant: str, out_indices):
    backbone = cfg.model.backbone
    assert backbone.type == 'pola_mm.PolaPP' and backbone.arch == variant
    assert backbone.drop_path_rate == RELEASED_DROP_PATH[variant]
    assert backbone.out_indices == out_indices
    assert backbone.norm_eval is True and backbone.out_norms is True
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint=f'checkpoints/polapp_{variant}.pth')
    assert cfg.runner_type == 'pola_mm.PolaRunner'


@pytest.mark.parametrize('config', DET_CONFIGS, ids=osp.basename)
def test_detection_settings_are_the_authors(config):
    cfg = Config.fromfile(config)
    variant, name = _variant(config), osp.basename(config)
    retinanet = name.startswith('retinanet')
    out_indices = (1, 2, 3) if retinanet else (0, 1, 2, 3)
    _check_backbone(cfg, variant, out_indices)
    dims = ARCHS['PolaPP'][variant]['embed_dims']
    assert cfg.model.neck.in_channels == [dims[i] for i in out_indices]
    if retinanet:  # P3-P7 from stages 1-3, P6 from the stride-32 input, as start_level=1
        assert cfg.model.neck.start_level == 0 and cfg.model.neck.add_extra_convs == 'on_input'
        assert cfg.model.neck.num_outs == 5
    # 8 GPUs x 2 images, 500 warm-up iterations, fp16 with the static loss scale 512
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == (
        'LinearLR', 0.001, 500, False)
    three_x = '3x' in name
    assert cfg.train_cfg.max_epochs == (36 if three_x else 12)
    assert (steps.type, steps.milestones) == (
        'MultiStepLR', [27, 33] if three_x else [8, 11])
    wrapper = cfg.optim_wrapper
    assert (wrapper.type, wrapper.loss_scale) == ('AmpOptimWrapper', 512.)
    assert wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                     weight_decay=1e-4 if retinanet else 0.05)
    assert wrapper.get('paramwise_cfg') == (
        None if retinanet else dict(custom_keys={'norm': dict(decay_mult=0.)}))
    assert 'model_wrapper_cfg' not in cfg  # no find_unused_parameters
    if three_x:  # Swin's multi-scale + crop augmentation, exactly
        import mmdet
        swin = _package_config(mmdet, 'swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py')
        assert cfg.train_dataloader.dataset.pipeline == swin.train_dataloader.dataset.pipeline


def test_retinanet_neck_on_stages_1_to_3_computes_the_authors_neck():
    """FPN(start_level=0) on stages 1-3 == the authors' FPN(start_level=1) on stages 0-3,
    with the same parameters under the same names."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(DET_DIR, 'retinanet_polapp-b2_fpn_1x_coco.py'))
    dims = ARCHS['PolaPP']['b2']['embed_dims']
    ours = MODELS.build(cfg.model.neck)
    theirs = MODELS.build(dict(cfg.model.neck, in_channels=dims, start_level=1))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(0)
    features = [torch.randn(1, c, 64 // 2**i, 48 // 2**i) for i, c in enumerate(dims)]
    with torch.no_grad():
        expected = theirs(features)
        outputs = ours(features[1:])
    assert len(outputs) == len(expected) == 5
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference, rtol=0, atol=0)


@pytest.mark.parametrize('config', SEG_CONFIGS, ids=osp.basename)
def test_segmentation_settings_are_the_authors(config, tmp_path):
    cfg = Config.fromfile(config)
    variant = _variant(config)
    _check_backbone(cfg, variant, (1, 2, 3))
    head = cfg.model.decode_head
    assert head.type == 'LightHamHead' and head.in_index == [0, 1, 2]
    assert head.in_channels == ARCHS['PolaPP'][variant]['embed_dims'][1:]
    assert (head.channels, head.ham_channels, head.num_classes) == (512, 512, 150)
    assert head.ham_kwargs == dict(MD_S=1, MD_R=16, train_steps=6, eval_steps=7, inv_t=100,
                                   rand_init=True)
    assert head.norm_cfg == dict(type='GN', num_groups=32, requires_grad=True)
    assert 'auxiliary_head' not in cfg.model and cfg.model.test_cfg.mode == 'whole'
    # SegNeXt's optimiser (fp32) and schedule, with the authors' batch of 64 (8 x 8)
    import mmseg
    segnext = _package_config(mmseg, 'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py')
    assert _unscoped(cfg.optim_wrapper) == _unscoped(segnext.optim_wrapper)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.optim_wrapper.optimizer.lr == 6e-5
    assert _unscoped(cfg.param_scheduler) == _unscoped(segnext.param_scheduler)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 8000
    assert cfg.default_hooks.checkpoint.interval == 8000
    assert cfg.train_dataloader.batch_size * 8 == 64 == cfg.auto_scale_lr.base_batch_size
    assert '8xb8' in osp.basename(config)
    assert 'model_wrapper_cfg' not in cfg  # no find_unused_parameters
    # ADE20K: the checked label loader; test images resized to multiples of 32
    assert [t.type for t in cfg.test_pipeline] == [
        'LoadImageFromFile', 'Resize', 'ResizeToMultiple', 'pola_mm.LoadCheckedSegAnnotations',
        'PackSegInputs']
    assert cfg.test_pipeline[2].size_divisor == 32
    assert cfg.train_pipeline[1].type == 'pola_mm.LoadCheckedSegAnnotations'
    assert cfg.train_pipeline[3].crop_size == (512, 512)

    # the test and TTA pipelines on an image of another size: every view a multiple of 32
    from mmcv.transforms import Compose
    from PIL import Image
    init_default_scope('mmseg')
    image = str(tmp_path / 'a.jpg')
    Image.fromarray(np.zeros((75, 101, 3), np.uint8)).save(image)
    label = str(tmp_path / 'a.png')
    Image.fromarray(np.ones((75, 101), np.uint8)).save(label)

    def results():
        return dict(img_path=image, seg_map_path=label, reduce_zero_label=True, seg_fields=[])

    packed = Compose(cfg.test_pipeline)(results())
    assert packed['inputs'].shape[1:] == (512, 704)  # (2048, 512) keep-ratio: 512 x 690
    assert packed['data_samples'].gt_sem_seg.data.shape[1:] == (75, 101)
    views = Compose(cfg.tta_pipeline)(results())
    assert len(views['inputs']) == 12
    assert all(v.shape[1] % 32 == 0 and v.shape[2] % 32 == 0 for v in views['inputs'])


def _small_detector(config: str):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    cfg.merge_from_dict({
        'model.backbone.arch': TINY_POLAPP_ARCH,
        'model.backbone.init_cfg': None,
        'model.neck.in_channels':
        [TINY_POLAPP_ARCH['embed_dims'][i] for i in cfg.model.backbone.out_indices],
        **_narrow_head_options(cfg.model.to_dict(), 'model.'),
    })
    return MODELS.build(cfg.model)


def _detection_loss(model):
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 64, 64)] * 2, num_items=[3, 2],
                            num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    return loss


def _small_segmentor(config: str):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    cfg.merge_from_dict({
        'model.data_preprocessor.size': (64, 64),
        'model.backbone.arch': TINY_POLAPP_ARCH,
        'model.backbone.init_cfg': None,
        'model.decode_head.in_channels': TINY_POLAPP_ARCH['embed_dims'][1:],
        'model.decode_head.channels': 16,
        'model.decode_head.ham_channels': 16,
        'model.decode_head.norm_cfg.num_groups': 4,
    })
    return MODELS.build(cfg.model)


def _segmentation_loss(model):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8,
                                    generator=generator))
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 150, (1, 64, 64), generator=generator))
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    return loss


@pytest.mark.parametrize('config,build,loss', [
    pytest.param(osp.join(DET_DIR, 'mask-rcnn_polapp-b2_fpn_1x_coco.py'), _small_detector,
                 _detection_loss, id='mask-rcnn'),
    pytest.param(osp.join(DET_DIR, 'retinanet_polapp-b2_fpn_1x_coco.py'), _small_detector,
                 _detection_loss, id='retinanet'),
    pytest.param(osp.join(SEG_DIR, 'lightham_polapp-b2_8xb8-160k_ade20k-512x512.py'),
                 _small_segmentor, _segmentation_loss, id='lightham'),
])
def test_every_trainable_parameter_gets_a_gradient(config, build, loss):
    """What DDP without find_unused_parameters needs: one training step reaches every
    parameter that requires a gradient (RetinaNet and LightHamHead read stages 1-3 only).
    Also: norm_eval keeps the backbone's BatchNorms in eval mode while training."""
    torch.manual_seed(0)
    model = build(config)
    model.train()
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, _BatchNorm))
    loss(model).backward()
    without = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without, without


@pytest.mark.parametrize('name', ['mask-rcnn_polapp-b2_fpn_1x_coco.py',
                                  'retinanet_polapp-b2_fpn_1x_coco.py'])
def test_mmdet_train_entry_on_a_user_config(name, shapes_root, tmp_path):
    """MMDetection's own tools/train.py: 2 iterations, then the validation at the end of
    the epoch prints the COCO mAP. Without a GPU the optimiser runs in an OptimWrapper."""
    import mmdet
    base = osp.join(DET_DIR, name)
    options, with_mask = small_options(base, shapes_root)
    config = tmp_path / f'user_{name}'
    config.write_text(f'_base_ = [{base!r}]\n' + USER_IMPORTS + ''.join(
        f'{key} = {value!r}\n' for key, value in nested(options).items()))
    work_dir = str(tmp_path / 'work')
    log = run_library_tool(mmdet, 'train.py', str(config), '--work-dir', work_dir,
                           cwd=str(tmp_path))
    assert 'Epoch(train) [1][2/2]' in log
    assert re.search(r'coco/bbox_mAP: \d', log), log[-2000:]
    assert bool(re.search(r'coco/segm_mAP: \d', log)) == with_mask, log[-2000:]
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


def test_mmseg_train_entry_on_a_user_config(ade_root, tmp_path):
    """MMSegmentation's own tools/train.py: 2 iterations, then the validation at the last
    iteration prints the mIoU."""
    import mmseg
    base = osp.join(SEG_DIR, 'lightham_polapp-b2_8xb8-160k_ade20k-512x512.py')
    config = tmp_path / 'user_lightham.py'
    config.write_text(f'_base_ = [{base!r}]\n' + USER_IMPORTS +
                      SMALL_DATA.format(root=ade_root, iters=2) + SMALL_MODELS['polapp'])
    work_dir = str(tmp_path / 'work')
    log = run_library_tool(mmseg, 'train.py', str(config), '--work-dir', work_dir,
                           '--cfg-options', *SMALL_SCALES, cwd=str(tmp_path))
    assert 'Iter(train) [2/2]' in log
    assert re.search(r'mIoU: \d', log), log[-2000:]
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
