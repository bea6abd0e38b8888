"""tools/train.py and tools/test.py on the detection configs, on generated shapes data.

Every config runs with a tiny Pola backbone of its own family and 64-px images: 2 training
iterations, then test.py with COCO metrics and ``--out``. Without a GPU, the PolaFormer++
configs' AmpOptimWrapper (which needs one) becomes the same optimiser in an OptimWrapper.
Also: two-process CPU training (gloo), resume, pre-flight path checks, Pola backbones
in detectors without a config here (FCOS, ATSS) through the one ``custom_imports`` line,
and ``--tta`` with mmdet's default flip TTA on a config without TTA settings.
"""
import copy
import glob
import importlib.util
import os.path as osp
import pickle
import subprocess
import sys
from unittest import mock

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner
from torchvision.ops import box_iou

from pola_mm.checkpoint import checkpoint_globals
from pola_mm.testing import make_shapes_coco, shapes_coco_dataloaders
from subprocess_env import child_env

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'detection', '*.py')))
IMAGE_SIZE = 64
TINY_PVT = dict(
    _delete_=True,
    type='pola_mm.PolaPVT',
    arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
              mlp_ratios=[2, 2, 2, 2]))
TINY_SWIN = dict(
    _delete_=True,
    type='pola_mm.PolaSwinTransformer',
    arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]))
TINY_CHANNELS = {'pola_mm.PolaPVT': [16, 32, 48, 64],
                 'pola_mm.PolaSwinTransformer': [16, 32, 64, 128]}
# PolaFormer++: only the arch shrinks (with _delete_: it replaces a name such as 'b2'), so
# the config's out_indices, norm_eval and output norms are the ones under test.
TINY_POLAPP_ARCH = dict(_delete_=True, embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                        num_heads=[1, 1, 1, 2], layer_scale_init=[1., 1., 1., 1.])
MASK_RCNN_PVT_T = osp.join(REPO, 'configs', 'detection', 'mask-rcnn_pola-pvt-t_fpn_1x_coco.py')


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'pola_tools_{name}', osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tool = _load_tool('train')
test_tool = _load_tool('test')


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_coco(root, num_images=dict(train=4, val=2), image_size=IMAGE_SIZE)
    return root


def _num_classes_options(node, prefix):
    options = {}
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for key, value in items:
        if key == 'num_classes':
            options[f'{prefix}{key}'] = 4
        else:
            options.update(_num_classes_options(value, f'{prefix}{key}.'))
    return options


def _narrow_head_options(node, prefix):
    """cfg-options: every 256- or 1024-wide neck/head setting (``*channels``) at 1/8."""
    options = {}
    for key, value in node.items():
        if isinstance(value, dict):
            options.update(_narrow_head_options(value, f'{prefix}{key}.'))
        elif key.endswith('channels') and value in (256, 1024):
            options[f'{prefix}{key}'] = value // 8
    return options


def small_options(config, data_root, backbone=None):
    """cfg-options: tiny backbone of the config's family, shapes data, 4 classes, 1 epoch."""
    cfg = Config.fromfile(config)
    model = cfg.model
    with_mask = 'mask_head' in str(model)
    options = shapes_coco_dataloaders(data_root, IMAGE_SIZE, with_mask=with_mask)
    options.update(_num_classes_options(model.to_dict(), 'model.'))
    if backbone is None and model.backbone.type == 'pola_mm.PolaPP':
        options.update({
            'model.backbone.arch': TINY_POLAPP_ARCH,
            'model.backbone.init_cfg': None,
            'model.neck.in_channels':
            [TINY_POLAPP_ARCH['embed_dims'][i] for i in model.backbone.out_indices],
        })
        # The PolaFormer++ configs (9) also narrow the FPN and the heads to 1/8 of their
        # width, which cuts their time here by about a third; the heads are mmdet's own.
        options.update(_narrow_head_options(model.to_dict(), 'model.'))
    else:
        backbone = backbone or (TINY_SWIN if 'Swin' in model.backbone.type else TINY_PVT)
        options.update({
            'model.backbone': backbone,
            'model.neck.in_channels': TINY_CHANNELS[backbone['type']],
        })
    options.update({'train_cfg.max_epochs': 1, 'default_hooks.logger.interval': 1})
    if (cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper'
            and not torch.cuda.is_available()):
        options['optim_wrapper'] = without_amp(cfg.optim_wrapper)
    # Keep the (untrained) detectors' low-score boxes so that the metrics are computed.
    if 'rcnn' in model.get('test_cfg', {}):
        options.update({'model.test_cfg.rcnn.score_thr': 0.0,
                        'model.test_cfg.rcnn.max_per_img': 10})
    else:
        options.update({'model.test_cfg.score_thr': 0.0, 'model.test_cfg.max_per_img': 10})
    return options, with_mask


def without_amp(optim_wrapper) -> dict:
    """The optimiser of an AmpOptimWrapper config in a plain OptimWrapper (AmpOptimWrapper
    refuses to build without a GPU), as a config override."""
    plain = {k: v for k, v in optim_wrapper.to_dict().items() if k != 'loss_scale'}
    return dict(plain, type='OptimWrapper', _delete_=True)


def run_train(argv, options):
    args = train_tool.parse_args(argv)
    args.cfg_options = copy.deepcopy(options)  # merging pops the '_delete_' keys
    runner = train_tool.build_runner(train_tool.build_config(args))
    runner.train()
    return runner


def run_test(argv, options):
    args = test_tool.parse_args(argv)
    args.cfg_options = copy.deepcopy(options)
    return test_tool.build_runner(test_tool.build_config(args)).test()


@pytest.mark.parametrize('config', DET_CONFIGS, ids=osp.basename)
def test_config_trains_and_tests(config, shapes_root, tmp_path):
    options, with_mask = small_options(config, shapes_root)
    work_dir = str(tmp_path)
    runner = run_train([config, '--work-dir', work_dir], options)
    assert runner.iter == 2
    checkpoint = osp.join(work_dir, 'epoch_1.pth')
    out = osp.join(work_dir, 'results.pkl')
    metrics = run_test([config, checkpoint, '--work-dir', work_dir, '--out', out], options)
    assert 0 <= metrics['coco/bbox_mAP'] <= 1
    if with_mask:
        assert 0 <= metrics['coco/segm_mAP'] <= 1
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2
    assert {'bboxes', 'labels', 'scores'} <= set(results[0]['pred_instances'])


def test_show_dir_draws_predictions(shapes_root, tmp_path):
    config = osp.join(REPO, 'configs', 'detection', 'retinanet_pola-pvt-t_fpn_1x_coco.py')
    options, _ = small_options(config, shapes_root)
    run_train([config, '--work-dir', str(tmp_path)], options)
    run_test([config, str(tmp_path / 'epoch_1.pth'), '--work-dir', str(tmp_path),
              '--show-dir', 'painted'], options)
    assert len(glob.glob(str(tmp_path / '*' / 'painted' / '*.png'))) == 2


def box_only_options(config, data_root):
    """``small_options`` of a Mask R-CNN config without its mask head (a Faster R-CNN),
    on the shapes data's boxes."""
    options, _ = small_options(config, data_root)
    options.update(shapes_coco_dataloaders(data_root, IMAGE_SIZE, with_mask=False))
    options.update({'model.roi_head.mask_head': None, 'model.roi_head.mask_roi_extractor': None})
    return options


def _same_or_suppressed(box, score, label, kept):
    """Whether a box is in ``kept`` (a greedy NMS's output at IoU 0.5), or was suppressed
    there: a kept box of its label scores at least as high and overlaps it by IoU > 0.5."""
    same_label = kept['labels'] == label
    if any(torch.allclose(b, box) and s == score
           for b, s in zip(kept['bboxes'][same_label], kept['scores'][same_label])):
        return True
    iou = box_iou(box[None], kept['bboxes'][same_label])[0]
    return bool(((iou > 0.5) & (kept['scores'][same_label] >= score)).any())


def test_tta_without_tta_settings_uses_mmdet_default_flip(shapes_root, tmp_path):
    """As mmdet's tools/test.py: DetTTAModel (NMS at IoU 0.5, 100 boxes) over the test
    image and its horizontal flip. The unflipped view gives the plain test's boxes: each
    of them is in the TTA result or suppressed there by a better box of its class."""
    assert 'tta_model' not in Config.fromfile(MASK_RCNN_PVT_T)
    options = box_only_options(MASK_RCNN_PVT_T, shapes_root)
    run_train([MASK_RCNN_PVT_T, '--work-dir', str(tmp_path)], options)
    argv = [MASK_RCNN_PVT_T, str(tmp_path / 'epoch_1.pth'), '--work-dir', str(tmp_path)]
    run_test(argv + ['--out', str(tmp_path / 'plain.pkl')], options)

    args = test_tool.parse_args(argv + ['--tta', '--out', str(tmp_path / 'tta.pkl')])
    args.cfg_options = copy.deepcopy(options)
    with pytest.warns(UserWarning, match="no tta_model in the config, using mmdet's default"):
        cfg = test_tool.build_config(args)
    assert cfg.model.type == 'DetTTAModel' and cfg.model.module.type == 'MaskRCNN'
    assert cfg.model.tta_cfg.to_dict() == dict(nms=dict(type='nms', iou_threshold=0.5),
                                               max_per_img=100)
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == [
        'LoadImageFromFile', 'Resize', 'LoadAnnotations', 'TestTimeAug']
    flips, (pack, ) = pipeline[-1].transforms
    assert [(t.type, t.prob) for t in flips] == [('RandomFlip', 1.), ('RandomFlip', 0.)]
    assert pack.type == 'PackDetInputs' and 'flip_direction' in pack.meta_keys
    metrics = test_tool.build_runner(cfg).test()
    assert 0 <= metrics['coco/bbox_mAP'] <= 1 and 'coco/segm_mAP' not in metrics

    with open(tmp_path / 'plain.pkl', 'rb') as f:
        plain = pickle.load(f)
    with open(tmp_path / 'tta.pkl', 'rb') as f:
        tta = pickle.load(f)
    assert [r['img_id'] for r in tta] == [r['img_id'] for r in plain] and len(tta) == 2
    from_flip = 0
    for before, after in zip(plain, tta):
        before, after = before['pred_instances'], after['pred_instances']
        assert len(before['scores']) == 10 and 0 < len(after['scores']) <= 20
        assert (after['scores'].diff() <= 0).all()
        assert after['bboxes'].min() >= 0 and after['bboxes'].max() <= IMAGE_SIZE
        for box, label in zip(after['bboxes'], after['labels']):
            # NMS: no two kept boxes of a class overlap by more than 0.5
            same_label = after['labels'] == label
            assert (box_iou(box[None], after['bboxes'][same_label]) > 0.5).sum() == 1
            from_flip += not any(torch.allclose(box, b) for b in before['bboxes'])
        for box, score, label in zip(*(before[k] for k in ('bboxes', 'scores', 'labels'))):
            assert _same_or_suppressed(box, score, label, after)
    assert from_flip > 0


@pytest.mark.parametrize('config', [
    MASK_RCNN_PVT_T,
    osp.join(REPO, 'configs', 'detection', 'cascade-mask-rcnn_pola-swin-t_fpn_ms-crop-3x_coco.py'),
], ids=osp.basename)
def test_tta_without_tta_settings_refuses_mask_predictions(config):
    """mmdet's DetTTAModel merges boxes only (it asserts there are no masks)."""
    args = test_tool.parse_args([config, 'unused.pth', '--tta'])
    with pytest.raises(RuntimeError, match=r'predicts masks \(model\.roi_head\.mask_head\); '
                       "mmdet's default DetTTAModel merges boxes only"):
        test_tool.build_config(args)


def test_out_for_detection_must_be_a_pickle(tmp_path):
    args = test_tool.parse_args([MASK_RCNN_PVT_T, 'unused.pth', '--out', str(tmp_path / 'maps')])
    with pytest.raises(ValueError, match=r"default_scope 'mmdet'\) --out is the \.pkl or "
                       r'\.pickle file the predictions are dumped to'):
        test_tool.build_config(args)


RETINANET_POLAPP_B2 = osp.join(REPO, 'configs', 'detection', 'retinanet_polapp-b2_fpn_1x_coco.py')


@pytest.mark.parametrize('wrapper_type', [None, 'mmengine.AmpOptimWrapper', AmpOptimWrapper],
                         ids=['config', 'scoped', 'class'])
def test_amp_leaves_an_amp_optim_wrapper_as_it_is(wrapper_type):
    """As mmdet's tools/train.py: --amp keeps the PolaFormer++ configs' AmpOptimWrapper
    and their static loss scale of 512, however the type is written, and says so."""
    args = train_tool.parse_args([RETINANET_POLAPP_B2, '--amp'])
    if wrapper_type is not None:
        args.cfg_options = {'optim_wrapper.type': wrapper_type}
    with mock.patch.object(train_tool, 'print_log') as print_log:
        cfg = train_tool.build_config(args)
    assert cfg.optim_wrapper.type == (wrapper_type or 'AmpOptimWrapper')
    assert cfg.optim_wrapper.loss_scale == 512.
    assert 'AMP training is already enabled in the config' in print_log.call_args.args[0]
    assert 'loss_scale 512.0' in print_log.call_args.args[0]


@pytest.mark.parametrize('wrapper_type', [None, 'OptimWrapper', 'mmengine.OptimWrapper',
                                          OptimWrapper], ids=['default', 'name', 'scoped', 'class'])
def test_amp_makes_an_optim_wrapper_amp_with_a_dynamic_loss_scale(wrapper_type):
    args = train_tool.parse_args([MASK_RCNN_PVT_T, '--amp'])
    args.cfg_options = {'optim_wrapper.type': wrapper_type}
    if wrapper_type is None:
        args.cfg_options = {'optim_wrapper': dict(_delete_=True, optimizer=dict(type='SGD'))}
    cfg = train_tool.build_config(args)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'


def test_amp_refuses_another_optim_wrapper():
    args = train_tool.parse_args([MASK_RCNN_PVT_T, '--amp', '--cfg-options',
                                  'optim_wrapper.type=ApexOptimWrapper'])
    with pytest.raises(RuntimeError, match="--amp turns an OptimWrapper into an AmpOptimWrapper, "
                       "but the config's optim_wrapper type is 'ApexOptimWrapper'"):
        train_tool.build_config(args)


@pytest.mark.parametrize('setting', ['None', 'dict(enable=False)', None],
                         ids=['none', 'no_base_batch_size', 'absent'])
def test_auto_scale_lr_needs_a_base_batch_size(setting, tmp_path):
    """A config without auto_scale_lr settings (None, as a config may set to drop its
    base's, included) gets the tool's error, not a TypeError."""
    config = tmp_path / 'config.py'
    config.write_text("default_scope = 'mmdet'\n" + (
        f'auto_scale_lr = {setting}\n' if setting else ''))
    args = train_tool.parse_args([str(config), '--auto-scale-lr'])
    with pytest.raises(RuntimeError, match=r'--auto-scale-lr needs '
                       r'auto_scale_lr=dict\(base_batch_size=\.\.\.\) in the config'):
        train_tool.build_config(args)


class _RecordResumeState(Hook):

    def before_train_epoch(self, runner):
        if not hasattr(self, 'epoch'):
            self.epoch = runner.epoch
            self.optimizer = copy.deepcopy(runner.optim_wrapper.state_dict())


def test_resume_continues_at_epoch_2_with_the_same_optimizer(shapes_root, tmp_path):
    config = osp.join(REPO, 'configs', 'detection', 'retinanet_pola-pvt-t_fpn_1x_coco.py')
    options, _ = small_options(config, shapes_root)
    run_train([config, '--work-dir', str(tmp_path)], options)
    with checkpoint_globals():
        saved = torch.load(tmp_path / 'epoch_1.pth', map_location='cpu')
    with pytest.raises(pickle.UnpicklingError):  # the safety stays on outside the block
        torch.load(tmp_path / 'epoch_1.pth', map_location='cpu')

    args = train_tool.parse_args([config, '--work-dir', str(tmp_path), '--resume'])
    args.cfg_options = dict(options, **{'train_cfg.max_epochs': 2})
    runner = train_tool.build_runner(train_tool.build_config(args))
    recorder = _RecordResumeState()
    runner.register_hook(recorder)
    runner.train()

    assert recorder.epoch == 1  # 0-based: training resumed at the second epoch
    assert runner.epoch == 2 and runner.iter == 4
    resumed = recorder.optimizer['state']
    assert resumed.keys() == saved['optimizer']['state'].keys()
    for index, state in saved['optimizer']['state'].items():
        for key, value in state.items():
            torch.testing.assert_close(resumed[index][key], value, rtol=0, atol=0)
    assert osp.exists(tmp_path / 'epoch_2.pth')


def test_checkpoint_globals_refuse_other_objects(tmp_path):
    from mmengine.logging import HistoryBuffer

    class UnlistedGetattr:

        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    path = tmp_path / 'other.pth'
    torch.save({'x': UnlistedGetattr()}, path)
    with checkpoint_globals(), pytest.raises(pickle.UnpicklingError,
                                                      match='__init__'):
        torch.load(path)
    torch.save({'ns': __import__('argparse').Namespace(a=1)}, path)
    with checkpoint_globals(), pytest.raises(pickle.UnpicklingError,
                                                      match='Namespace'):
        torch.load(path)


def test_missing_pretrained_checkpoint_fails_before_training(shapes_root, tmp_path):
    config = osp.join(REPO, 'configs', 'detection', 'retinanet_pola-pvt-t_fpn_1x_coco.py')
    options, _ = small_options(config, shapes_root)
    missing = str(tmp_path / 'nowhere' / 'pola_pvt_tiny.pth')
    options['model.backbone'] = dict(
        TINY_PVT, init_cfg=dict(type='Pretrained', checkpoint=missing))
    with pytest.raises(FileNotFoundError, match=missing):
        run_train([config, '--work-dir', str(tmp_path / 'work')], options)
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))


@pytest.mark.parametrize('key,missing', [
    ('data_root', 'no_such_root'),
    ('ann_file', 'annotations/instances_missing.json'),
    ('data_prefix', dict(img='missing_images/')),
])
def test_missing_dataset_path_fails_before_training(key, missing, shapes_root, tmp_path):
    config = osp.join(REPO, 'configs', 'detection', 'retinanet_pola-pvt-t_fpn_1x_coco.py')
    options, _ = small_options(config, shapes_root)
    dataset = options['train_dataloader']['dataset']
    dataset[key] = str(tmp_path / missing) if key == 'data_root' else missing
    expected = missing if isinstance(missing, str) else missing['img']
    with pytest.raises(FileNotFoundError, match=expected):
        run_train([config, '--work-dir', str(tmp_path / 'work')], options)


RANK_DUMP_HOOK = '''
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpWeightsPerRank(Hook):

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save(model.state_dict(), f'{runner.work_dir}/rank{get_rank()}.pth')
'''


def _child_config(path, base, options, **extra):
    lines = [f'_base_ = {base!r}']
    lines += [f'{key} = {value!r}' for key, value in extra.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    cfg = Config.fromfile(path, import_custom_modules=False)
    cfg.merge_from_dict(options)
    cfg.dump(path)
    return path


def test_two_cpu_processes_train_to_identical_weights(shapes_root, tmp_path):
    base = osp.join(REPO, 'configs', 'detection', 'retinanet_pola-pvt-t_fpn_1x_coco.py')
    options, _ = small_options(base, shapes_root)
    options['train_dataloader']['batch_size'] = 1  # 4 images / 2 ranks / 1 = 2 iterations
    (tmp_path / 'rank_dump_hook.py').write_text(RANK_DUMP_HOOK)
    config = _child_config(
        str(tmp_path / 'ddp.py'), base, options,
        custom_imports=dict(imports=['rank_dump_hook'], allow_failed_imports=False),
        custom_hooks=[dict(type='DumpWeightsPerRank')])
    env = child_env(tmp_path, REPO, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         '--master_port=29531', osp.join(REPO, 'tools', 'train.py'), config,
         '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work')],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Epoch(train) [1][2/2]' in result.stdout + result.stderr
    rank0 = torch.load(tmp_path / 'work' / 'rank0.pth')
    rank1 = torch.load(tmp_path / 'work' / 'rank1.pth')
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)


@pytest.mark.parametrize('base', [
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'mmdet::atss/atss_r50_fpn_1x_coco.py',
])
def test_pola_backbone_in_other_mmdet_detectors(base, shapes_root, tmp_path):
    """The README's recipe: one custom_imports line, then type='pola_mm.PolaPVT'."""
    import mmdet
    mmdet_config = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                            base[len('mmdet::'):])
    options, _ = small_options(mmdet_config, shapes_root)
    config = _child_config(
        str(tmp_path / 'other.py'), base, options,
        custom_imports=dict(imports=['pola_mm'], allow_failed_imports=False))
    cfg = Config.fromfile(config)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)  # mmengine's own runner: no pola_mm tools involved
    runner.train()
    assert runner.iter == 2
    assert type(runner.model.backbone).__name__ == 'PolaPVT'


def expected_weight_decay(config: str, name: str) -> float:
    """The weight decay of parameter ``name`` in ``config``'s optimiser."""
    if '_polapp-' in osp.basename(config):
        # the PolaFormer++ authors': Swin's recipe for Mask R-CNN (0.05, none on 'norm'
        # parameters), PVT's for RetinaNet (1e-4 everywhere)
        if osp.basename(config).startswith('retinanet'):
            return 1e-4
        return 0 if 'norm' in name else 0.05
    # the paper's 1e-4, except on norms, positional tables and the Pola attention's scale
    # and power (pola_mm's choice, configs/_base_/pola_no_weight_decay.py)
    no_decay = ('norm', 'pos_embed', 'positional_encoding', 'relative_position_bias_table',
                'attn.scale', 'attn.power')
    return 0 if any(key in name for key in no_decay) else 1e-4


def test_cascade_has_the_box_heads_of_swins_cascade():
    """The paper compares with Swin's Cascade Mask R-CNN (4conv1fc heads with SyncBN, GIoU
    loss of weight 10 on decoded boxes), not mmdet's default shared-FC heads."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'detection',
                                   'cascade-mask-rcnn_pola-swin-t_fpn_ms-crop-3x_coco.py'))
    heads = cfg.model.roi_head.bbox_head
    assert [(head.type, head.num_shared_convs, head.num_shared_fcs, head.norm_cfg.type,
             head.loss_bbox.type, head.loss_bbox.loss_weight, head.reg_decoded_bbox)
            for head in heads] == [('ConvFCBBoxHead', 4, 1, 'SyncBN', 'GIoULoss', 10.0, True)] * 3
    assert [head.bbox_coder.target_stds for head in heads] == [
        [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]


@pytest.mark.parametrize('config', DET_CONFIGS, ids=osp.basename)
def test_config_builds_with_its_released_backbone(config):
    """The real arch (not the tiny one of the other tests) feeds the neck it is paired with."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    polapp = cfg.model.backbone.type == 'pola_mm.PolaPP'
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    if polapp:
        assert checkpoint == f'checkpoints/polapp_{cfg.model.backbone.arch}.pth'
    else:
        assert checkpoint.startswith('checkpoints/pola_')
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == list(cfg.model.neck.in_channels)
    strides = [(4, 8, 16, 32)[i] for i in cfg.model.backbone.out_indices]
    assert [f.shape[-2:] for f in features] == [(-(-64 // s), -(-96 // s)) for s in strides]

    from mmengine.optim import build_optim_wrapper
    optim_wrapper = cfg.optim_wrapper
    if polapp:  # the authors' fp16: static loss scale 512 (AmpOptimWrapper needs a GPU)
        assert (optim_wrapper.type, optim_wrapper.loss_scale) == ('AmpOptimWrapper', 512.)
        optim_wrapper = without_amp(optim_wrapper)
        del optim_wrapper['_delete_']
    optimizer = build_optim_wrapper(model, optim_wrapper).optimizer
    assert (type(optimizer).__name__, optimizer.defaults['lr']) == ('AdamW', 1e-4)
    decay = {id(p): group['weight_decay'] for group in optimizer.param_groups
             for p in group['params']}
    names = [name for name, _ in model.named_parameters()]
    assert any(name.endswith('attn.s1' if polapp else 'attn.power') for name in names)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        assert decay[id(param)] == expected_weight_decay(config, name), name
