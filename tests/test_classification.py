"""MMPretrain classifiers of the released PolaFormer and PolaFormer++ models (issue 7).

The classifier built from each evaluation config, loaded with a random checkpoint in the
official layout (tests/official_layout.py, tests/polapp_layout.py), must give the official
model's logits for those weights (tests/fixtures/official_golden/, produced by the
authors' code; for PolaFormer++ the authors' classifier written out here from the released
tensors). The configs must also run through tools/test.py and tools/train.py on a
generated dataset.
"""
import filecmp
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys
from types import ModuleType, SimpleNamespace
from typing import Optional
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.registry import MODELS
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

import pola_mm  # noqa: F401  (registers the backbones and the hook)
from official_layout import (GOLDEN_DIR, official_checkpoint, official_input, official_input_size,
                             official_layout_state_dict, official_shapes)
from pola_mm.checkpoint import (describe_official_arch, drop_classifier_and_buffers,
                                official_classifier_state_dict, read_checkpoint)
from pola_mm.engine import OfficialClassifierCheckpointHook, build_runner
from pola_mm.models import PolaPP, PolaPPClassifierNeck
from pola_mm.ops.rope import rope_angles
from pola_mm.testing.imagefolder import make_shapes_imagefolder
from pola_mm.variants import POLAPP, PVT, RELEASED, SWIN, V1_FAMILIES, ReleasedModel, released_model
from polapp_layout import polapp_input, polapp_num_params, polapp_shapes, recipe_state_dict

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs', 'classification')
CONFIG_STEMS = {SWIN: 'pola-swin', PVT: 'pola-pvt', POLAPP: 'polapp'}


def config_stem(model: ReleasedModel) -> str:
    """``pola-swin-tiny``, ``pola-swin-base`` (+ ``-384px``), ``polapp-b0``, ..."""
    return f'{CONFIG_STEMS[model.family]}-{model.arch}'


def eval_config_name(model: ReleasedModel) -> str:
    """``pola-swin-tiny_16xb64_in1k.py``, ``pola-swin-base_16xb64_in1k-384px.py``, ..."""
    size = '' if model.img_size == 224 else f'-{model.img_size}px'
    return f'{config_stem(model)}_16xb64_in1k{size}.py'


def finetune_config_name(model: ReleasedModel) -> str:
    """``pola-pvt-tiny_in1k-pre_8xb32_custom.py``, ``polapp-b0_in1k-pre_8xb32_custom.py``, ...;
    at 384x384, 16 images per GPU: ``pola-swin-base_in1k-384px-pre_8xb16_custom.py``."""
    if model.img_size == 224:
        return f'{config_stem(model)}_in1k-pre_8xb32_custom.py'
    return f'{config_stem(model)}_in1k-{model.img_size}px-pre_8xb16_custom.py'


EVAL_CONFIGS = {model.name: eval_config_name(model) for model in RELEASED}
V1_RELEASED = sorted(model.name for model in RELEASED if model.family in V1_FAMILIES)
POLAPP_RELEASED = sorted(model.name for model in RELEASED if model.family == POLAPP)


def released_shapes(name: str) -> dict:
    """{key: shape} of the released file ``name``, as the authors' code writes it."""
    model = released_model(name)
    return polapp_shapes(model.arch) if model.family == POLAPP else official_shapes(name)


def released_state_dict(name: str, seed: int = 0) -> dict:
    """Random weights in the layout of the released file ``name`` (its 'model' entry):
    tests/official_layout.py's recipe for PolaFormer, tests/polapp_layout.py's for
    PolaFormer++ with the RoPE frequencies (buffers the recipe leaves out) filled in."""
    model = released_model(name)
    if model.family != POLAPP:
        return official_layout_state_dict(name, seed)
    shapes = polapp_shapes(model.arch)
    weights = recipe_state_dict(shapes, seed)
    return {key: weights[key] if key in weights else rope_angles(2 * shape[0])
            for key, shape in shapes.items()}


def save_training_file(path, name: str) -> dict:
    """Write ``name``'s random weights as the authors' training code does: ``'model'``
    (seed 0), ``'state_dict_ema'`` (seed 1), the optimizer state and a yacs ``CfgNode``
    (a stand-in class pickled under yacs' module path); return the checkpoint."""
    yacs, config = ModuleType('yacs'), ModuleType('yacs.config')
    config.CfgNode = type('CfgNode', (dict, ), {'__module__': 'yacs.config'})
    checkpoint = dict(
        model=released_state_dict(name, seed=0), state_dict_ema=released_state_dict(name, seed=1),
        optimizer={'state': {}, 'param_groups': [{'lr': 2e-3, 'params': [0]}]}, epoch=299,
        config=config.CfgNode(MODEL=config.CfgNode(TYPE=f'pola{name[-2:]}')))
    with mock.patch.dict(sys.modules, {'yacs': yacs, 'yacs.config': config}):
        torch.save(checkpoint, path)
    return checkpoint


def authors_polapp_logits(official: dict, features: torch.Tensor) -> torch.Tensor:
    """The authors' PolaFormer++ classifier on the raw (B, C, h, w) last stage map, from
    the released tensors: 1x1 conv ``proj``, BatchNorm ``norm`` (eval), swish, average
    pooling, 1x1 conv ``head``, flatten -> (B, classes) logits."""
    x = F.conv2d(features, official['proj.weight'], official['proj.bias'])
    x = F.batch_norm(x, official['norm.running_mean'], official['norm.running_var'],
                     official['norm.weight'], official['norm.bias'], training=False)
    x = F.adaptive_avg_pool2d(x * torch.sigmoid(x), 1)
    return F.conv2d(x, official['head.weight'], official['head.bias']).flatten(1)


def polapp_features(path: str, arch: str, images: torch.Tensor, **init) -> torch.Tensor:
    """(B, C, h, w) raw last stage map of a PolaPP backbone loaded from ``path`` through its
    own ``init_cfg`` (``init`` adds e.g. ``weights='state_dict_ema'``)."""
    backbone = PolaPP(arch, out_indices=(3, ), out_norms=False,
                      init_cfg=dict(type='Pretrained', checkpoint=path, **init))
    backbone.init_weights()
    with torch.no_grad():
        return backbone.eval()(images)[0]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def build_classifier(arch: str) -> torch.nn.Module:
    """The ImageClassifier of ``arch``'s evaluation config, in eval mode."""
    cfg = Config.fromfile(osp.join(CONFIGS, EVAL_CONFIGS[arch]))
    init_default_scope('mmpretrain')
    return MODELS.build(cfg.model).eval()


def load_released(model: torch.nn.Module, released: dict, name: str,
                  weights: Optional[str] = None) -> None:
    """Load a released-style dict the way ``load_from`` does: through the config's hook
    (``weights`` as the hook's argument)."""
    runner = SimpleNamespace(model=model, cfg=Config(dict(load_from=name)))
    OfficialClassifierCheckpointHook(weights).after_load_checkpoint(runner, released)
    model.load_state_dict(released['state_dict'], strict=True)


@pytest.mark.parametrize('arch', V1_RELEASED)
def test_classifier_reproduces_official_logits(arch):
    torch.manual_seed(0)
    model = build_classifier(arch)
    load_released(model, official_checkpoint(official_layout_state_dict(arch, seed=0)), arch)
    with torch.no_grad():
        logits = model(official_input(arch), mode='tensor')
    golden = np.load(GOLDEN_DIR / f'{arch}.npz')
    expected = torch.from_numpy(golden['logits'])
    assert logits.shape == expected.shape == (2, 1000)
    assert relative_error(logits, expected) < 1e-4


def shapes_of(arch: str) -> dict:
    """Meta tensors with the official checkpoint's shapes (no memory)."""
    return {key: torch.empty(shape, device='meta')
            for key, shape in released_shapes(arch).items()}


@pytest.mark.parametrize('arch', sorted(EVAL_CONFIGS))
def test_describe_official_arch_names_every_release(arch):
    assert describe_official_arch(shapes_of(arch)) == arch


def test_released_file_of_another_arch_is_rejected():
    model = build_classifier('pola_pvt_small')
    with pytest.raises(RuntimeError, match='holds pola_pvt_tiny weights, but the model is '
                       'pola_pvt_small'):
        load_released(model, {'model': official_layout_state_dict('pola_pvt_tiny')},
                      'pola_pvt_tiny.pth')
    with pytest.raises(RuntimeError, match='holds pola_swin_tiny weights'):
        official_classifier_state_dict(shapes_of('pola_swin_tiny'), model.backbone)


def test_released_file_without_classifier_is_rejected():
    official = official_layout_state_dict('pola_pvt_tiny')
    del official['head.weight'], official['head.bias']
    model = build_classifier('pola_pvt_tiny')
    with pytest.raises(RuntimeError, match='no classifier key head.weight'):
        load_released(model, {'model': official}, 'backbone_only.pth')


def test_polapp_classifier_keys_are_anchored():
    """Only the top-level proj.*, norm.* and head.* are the classifier's: attn.proj,
    downsample.norm and norm1.norm stay in the backbone; proj/norm go to the neck and the
    conv head's kernel is squeezed for the linear head."""
    official = released_state_dict('polapp_b0')
    dropped = []
    kept = drop_classifier_and_buffers(official, dropped, PolaPP.classifier_keys)
    assert sorted(dropped) == sorted(
        ['proj.weight', 'proj.bias', 'head.weight', 'head.bias'] +
        [f'norm.{name}' for name in ('weight', 'bias', 'running_mean', 'running_var',
                                     'num_batches_tracked')])
    assert {'patch_embed.proj.0.weight', 'layers.0.blocks.0.attn.proj.weight',
            'layers.0.blocks.0.norm1.norm.weight', 'layers.0.downsample.norm.running_var',
            'layers.0.RoPE.angle'} <= set(kept)
    model = build_classifier('polapp_b0')
    converted = official_classifier_state_dict(official, model.backbone)
    assert converted.keys() == model.state_dict().keys()
    assert converted['head.fc.weight'].shape == (1000, 2048)
    assert torch.equal(converted['neck.norm.running_var'], official['norm.running_var'])
    assert torch.equal(converted['backbone.layers.0.blocks.0.attn.proj.weight'],
                       official['layers.0.blocks.0.attn.proj.weight'])


def test_polapp_classifier_computes_the_authors_logits(tmp_path):
    """A released PolaFormer++ training file through the evaluation config's hook: its
    'model' weights by default, its EMA weights when the hook names them; the logits are
    the authors' classifier's (written out from the released tensors) on the raw last stage
    map of a backbone loaded through its own init_cfg."""
    path = str(tmp_path / 'polapp_b0.pth')
    released = save_training_file(path, 'polapp_b0')
    images = polapp_input(0, (2, 3, 96, 128))
    model = build_classifier('polapp_b0')
    logits = {}
    for weights in (None, 'state_dict_ema'):
        load_released(model, read_checkpoint(path), path, weights)
        with torch.no_grad():
            logits[weights] = model(images, mode='tensor')
        init = {} if weights is None else dict(weights=weights)
        expected = authors_polapp_logits(released[weights or 'model'],
                                         polapp_features(path, 'b0', images, **init))
        assert logits[weights].shape == (2, 1000)  # (96, 128) -> a 3x4 last stage map
        assert relative_error(logits[weights], expected) < 1e-6
    assert relative_error(logits['state_dict_ema'], logits[None]) > 0.1


def test_polapp_neck_init_cfg_takes_the_released_projection(tmp_path):
    path = str(tmp_path / 'polapp_b0.pth')
    released = save_training_file(path, 'polapp_b0')
    for init, entry in ((dict(), 'model'), (dict(weights='state_dict_ema'), 'state_dict_ema')):
        neck = PolaPPClassifierNeck(384, 2048,
                                    init_cfg=dict(type='Pretrained', checkpoint=path, **init))
        neck.init_weights()
        for key in ('proj.weight', 'proj.bias', 'norm.weight', 'norm.running_var'):
            assert torch.equal(neck.state_dict()[key], released[entry][key])
    with pytest.raises(RuntimeError, match="no weights under 'ema'"):
        PolaPPClassifierNeck(384, init_cfg=dict(
            type='Pretrained', checkpoint=path, weights='ema')).init_weights()
    with pytest.raises(RuntimeError, match='proj.weight: checkpoint .2048, 384, 1, 1. vs '
                       'model .2048, 512, 1, 1.'):
        PolaPPClassifierNeck(512, init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


def official_eval_transform(arch: str) -> transforms.Compose:
    """The authors' torchvision evaluation transform of ``arch``: PolaFormer resizes the
    shorter side to int(S / 0.875) and crops the centre S x S, or for the 384 model
    (TEST.CROP False) resizes to S x S; PolaFormer++ resizes to a square 256 x 256 and
    crops the centre 224 x 224. Bicubic, ImageNet mean/std."""
    size = official_input_size(arch)
    if released_model(arch).family == POLAPP:
        resize = [transforms.Resize((256, 256), interpolation=InterpolationMode.BICUBIC),
                  transforms.CenterCrop(size)]
    elif size == 384:
        resize = [transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC)]
    else:
        resize = [transforms.Resize(int(size / 0.875), interpolation=InterpolationMode.BICUBIC),
                  transforms.CenterCrop(size)]
    return transforms.Compose(resize + [
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


@pytest.mark.parametrize('arch, config', [
    ('pola_pvt_tiny', EVAL_CONFIGS['pola_pvt_tiny']),
    ('pola_swin_base_384', EVAL_CONFIGS['pola_swin_base_384']),
    ('polapp_b0', EVAL_CONFIGS['polapp_b0']),
    ('polapp_b5', finetune_config_name(released_model('polapp_b5')))])
def test_eval_preprocessing_is_the_official_one(arch, config, tmp_path):
    """The config's test pipeline + data preprocessor equal the official torchvision
    evaluation transform (:func:`official_eval_transform`)."""
    cfg = Config.fromfile(osp.join(CONFIGS, config))
    init_default_scope('mmpretrain')
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    preprocessor = MODELS.build(dict(type='ClsDataPreprocessor', **cfg.data_preprocessor))
    size = official_input_size(arch)
    official = official_eval_transform(arch)
    rng = np.random.default_rng(0)
    for height, width in [(375, 500), (301, 299)]:
        path = str(tmp_path / f'{height}x{width}.png')
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        packed = pipeline(dict(img_path=path))
        ours = preprocessor(dict(inputs=[packed['inputs']]))['inputs'][0]
        expected = official(Image.open(path).convert('RGB'))
        assert ours.shape == expected.shape == (3, size, size)
        assert torch.allclose(ours, expected, atol=1e-5)


def test_imagefolder_generation_is_deterministic(tmp_path):
    classes = make_shapes_imagefolder(str(tmp_path / 'a'), num_classes=3, seed=3)
    make_shapes_imagefolder(str(tmp_path / 'b'), num_classes=3, seed=3)
    assert classes == sorted(classes) == ['disc', 'square', 'triangle']
    for split in ('train', 'val'):
        for name in classes:
            files = sorted(os.listdir(tmp_path / 'a' / split / name))
            assert len(files) == 4
            match, mismatch, errors = filecmp.cmpfiles(
                tmp_path / 'a' / split / name, tmp_path / 'b' / split / name, files,
                shallow=False)
            assert not mismatch and not errors
    with pytest.raises(ValueError, match='num_classes'):
        make_shapes_imagefolder(str(tmp_path / 'c'), num_classes=9)


def run_tool(*args: str) -> str:
    """Run a pola_mm tool, fail with its output if it fails, return its output."""
    env = dict(os.environ, OMP_NUM_THREADS='2')
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-5000:]
    return result.stdout


@pytest.fixture(scope='module')
def shapes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_imagefolder(str(root / 'data'), num_classes=3,
                            images_per_class=dict(train=2, val=2), seed=0)
    released = root / 'pola_pvt_tiny.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny', seed=1)), released)
    return root


def eval_config(shapes_data):
    """The Pola-PVT-T evaluation config on the generated val images."""
    config = shapes_data / 'eval.py'
    config.write_text(
        f"_base_ = ['{CONFIGS}/pola-pvt-tiny_16xb64_in1k.py']\n"
        "test_dataloader = dict(batch_size=3, num_workers=0, dataset=dict(\n"
        f"    _delete_=True, type='CustomDataset', data_root='{shapes_data}/data',\n"
        "    data_prefix='val', pipeline={{_base_.test_pipeline}}))\n")
    return config


def test_eval_config_reports_accuracy_with_tools_test(shapes_data):
    config = eval_config(shapes_data)
    output = run_tool('tools/test.py', str(config), str(shapes_data / 'pola_pvt_tiny.pth'),
                      '--work-dir', str(shapes_data / 'eval_work'))
    assert 'accuracy/top1' in output and 'accuracy/top5' in output
    assert 'Load checkpoint from' in output


def test_tta_without_tta_settings_averages_flipped_scores(shapes_data):
    """As MMPretrain's tools/test.py: a classification config without tta settings gets
    AverageClsScoreTTA over each image and its horizontal flip."""
    config = eval_config(shapes_data)
    work_dir = shapes_data / 'tta_work'
    output = run_tool('tools/test.py', str(config), str(shapes_data / 'pola_pvt_tiny.pth'),
                      '--work-dir', str(work_dir), '--tta')
    assert 'accuracy/top1' in output and "mmpretrain's default AverageClsScoreTTA" in output
    cfg = Config.fromfile(str(work_dir / 'eval.py'))  # as the runner ran it
    assert cfg.model.type == 'mmpretrain.AverageClsScoreTTA'
    assert cfg.model.module.backbone.type == 'pola_mm.PolaPVT'
    flip = cfg.test_dataloader.dataset.pipeline[-1]
    assert flip.type == 'TestTimeAug' and [t['prob'] for t in flip.transforms[0]] == [1., 0.]
    assert flip.transforms[1][0]['type'] == 'PackInputs'


def test_show_dir_paints_every_image(shapes_data, tmp_path):
    """As MMPretrain's tools/test.py (--interval 1): every test image is painted, not one
    in 5000 (the VisualizationHook's default). The hook names a painting after its image's
    file name, which repeats across the class folders here: paintings are counted as
    made. Only the ground truth is drawn: the ImageNet head predicts classes that the 3
    of these images do not name."""
    from mmpretrain.visualization import UniversalVisualizer
    spec = importlib.util.spec_from_file_location('pola_tools_test',
                                                  osp.join(REPO, 'tools', 'test.py'))
    test_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_tool)
    painted = []
    visualize_cls = UniversalVisualizer.visualize_cls

    def recorded(self, *args, **kwargs):
        painted.append((kwargs['data_sample'].img_path, kwargs['out_file']))
        return visualize_cls(self, *args, **kwargs)

    show_dir = tmp_path / 'painted'
    with mock.patch.object(UniversalVisualizer, 'visualize_cls', recorded):
        test_tool.main([str(eval_config(shapes_data)), str(shapes_data / 'pola_pvt_tiny.pth'),
                        '--work-dir', str(tmp_path / 'work'), '--show-dir', str(show_dir),
                        '--cfg-options', 'default_hooks.visualization.draw_pred=False'])
    val = sorted(osp.join(root, name) for root, _, names in os.walk(shapes_data / 'data' / 'val')
                 for name in names)
    assert len(val) == 6 and sorted(path for path, _ in painted) == val
    assert all(out_file.startswith(str(show_dir)) and osp.isfile(out_file)
               for _, out_file in painted)


def test_finetune_config_trains_two_iterations(shapes_data):
    released = shapes_data / 'pola_pvt_tiny.pth'
    config = shapes_data / 'finetune.py'
    config.write_text(
        f"_base_ = ['{CONFIGS}/pola-pvt-tiny_in1k-pre_8xb32_custom.py']\n"
        f"data_root = '{shapes_data}/data'\n"
        "model = dict(backbone=dict(init_cfg=dict(checkpoint="
        f"'{released}')), head=dict(num_classes=3))\n"
        "data_preprocessor = dict(num_classes=3)\n"
        "train_dataloader = dict(batch_size=6, num_workers=0, dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(batch_size=6, num_workers=0, dataset=dict(data_root=data_root))\n"
        "test_dataloader = val_dataloader\n"
        "train_cfg = dict(max_epochs=2)\n"
        "default_hooks = dict(logger=dict(interval=1), checkpoint=dict(save_best=None))\n")
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(shapes_data / 'finetune_work')
    # Train and validate on 64x64 crops (the config's 224 costs minutes on 2 CPU cores).
    cfg.train_dataloader.dataset.pipeline[1].scale = 64
    cfg.val_dataloader.dataset.pipeline[1].scale = 73
    cfg.val_dataloader.dataset.pipeline[2].crop_size = 64
    runner = Runner.from_cfg(cfg)
    model = runner.train()
    assert runner.iter == 2
    assert model.head.fc.weight.shape == (3, 512)
    # The backbone started from the released file: two steps of a warming-up AdamW
    # (lr about 1e-7) leave its weights where the file put them.
    official = official_layout_state_dict('pola_pvt_tiny', seed=1)
    assert torch.allclose(model.backbone.patch_embed1.proj.weight.detach(),
                          official['patch_embed1.proj.weight'], atol=1e-4)
    assert osp.exists(osp.join(cfg.work_dir, 'epoch_2.pth'))


def test_hook_leaves_openmmlab_checkpoints_to_mmengine():
    model = build_classifier('pola_pvt_tiny')
    checkpoint = {'state_dict': dict(model.state_dict()), 'meta': {}}
    runner = SimpleNamespace(model=model, cfg=Config(dict(load_from='epoch_1.pth')))
    OfficialClassifierCheckpointHook().after_load_checkpoint(runner, checkpoint)
    assert checkpoint['state_dict'].keys() == model.state_dict().keys()
    # Official weights saved under 'state_dict' are still converted.
    official = official_layout_state_dict('pola_pvt_tiny')
    load_released(model, {'state_dict': official}, 'official_under_state_dict.pth')
    assert torch.equal(model.head.fc.weight, official['head.weight'])


@pytest.mark.parametrize('config', sorted(name for name in os.listdir(CONFIGS)
                                           if name.endswith('.py')))
def test_config_names_state_their_batch(config):
    """``<gpus>xb<per GPU>``: the per-GPU batch, the batch ``--auto-scale-lr`` scales from,
    and, for fine-tuning, the lr of the base recipe (1e-4 at 256) scaled to that batch."""
    gpus, per_gpu = map(int, re.search(r'_(\d+)xb(\d+)_', config).groups())
    cfg = Config.fromfile(osp.join(CONFIGS, config))
    assert cfg.train_dataloader.batch_size == per_gpu
    assert cfg.auto_scale_lr.base_batch_size == gpus * per_gpu
    if config.endswith('_custom.py'):
        assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-4 * gpus * per_gpu / 256)


POLAPP_CONFIGS = [(name, make(released_model(name))) for name in POLAPP_RELEASED
                  for make in (eval_config_name, finetune_config_name)]
# Sizes of a brief run: the configs' 224 (256 before the crop) costs minutes on 2 CPU cores.
BRIEF_SIZES = {'RandomResizedCrop': dict(scale=32), 'Resize': dict(scale=(37, 37)),
               'CenterCrop': dict(crop_size=32)}


def brief_run_config(config: str, data_root: str, work_dir: str) -> Config:
    """``config`` on the generated shapes data (6 images per split) at 32x32: one epoch of
    2 iterations (batches of 3) at the config's warm-up learning rate, then its evaluation
    (one batch); no checkpoint written."""
    cfg = Config.fromfile(osp.join(CONFIGS, config))
    cfg.work_dir = work_dir
    for loader, split, batch in (('train_dataloader', 'train', 3), ('val_dataloader', 'val', 6),
                                 ('test_dataloader', 'val', 6)):
        pipeline = [dict(step, **BRIEF_SIZES.get(step['type'], {}))
                    for step in cfg[loader].dataset.pipeline]
        cfg[loader] = dict(cfg[loader], batch_size=batch, num_workers=0, dataset=dict(
            type='CustomDataset', data_root=data_root, data_prefix=split, pipeline=pipeline))
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.param_scheduler = [step for step in cfg.param_scheduler if step.type == 'LinearLR']
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    return cfg


@pytest.fixture(scope='module')
def polapp_b0_file(shapes_data):
    """A released-style PolaFormer++ b0 training file: its path and content."""
    path = str(shapes_data / 'polapp_b0.pth')
    return path, save_training_file(path, 'polapp_b0')


@pytest.mark.parametrize('name, config', POLAPP_CONFIGS)
def test_polapp_config_trains_and_evaluates(name, config, shapes_data, polapp_b0_file,
                                            tmp_path):
    """Every PolaFormer++ config builds the authors' classifier (their parameter count,
    with the fine-tuning head's classes), trains 2 iterations and reports its top-1.

    The b0 configs start from a released-style file: the evaluation config through
    ``load_from`` (the hook), the fine-tuning config through the backbone's and the neck's
    init_cfg.
    """
    path, released = polapp_b0_file
    pretrained = name == 'polapp_b0'
    finetune = config == finetune_config_name(released_model(name))
    cfg = brief_run_config(config, str(shapes_data / 'data'), str(tmp_path))
    if finetune:
        init = dict(type='Pretrained', checkpoint=path) if pretrained else None
        cfg.model.backbone.init_cfg = cfg.model.neck.init_cfg = init
        cfg.model.head.num_classes = cfg.data_preprocessor.num_classes = 3
    else:
        cfg.load_from = path if pretrained else None
    runner = build_runner(cfg)
    model = runner.train()
    assert runner.iter == 2
    assert 0 <= runner.message_hub.get_scalar('val/accuracy/top1').current() <= 100
    classes = 3 if finetune else 1000
    width = released_model(name).head_args['projection']
    assert (sum(param.numel() for param in model.parameters()) ==
            polapp_num_params(name) - (1000 - classes) * (width + 1))
    if pretrained:  # two AdamW steps at warm-up rates (<= 1e-4) move a weight by <= 2e-4
        official = released['model']
        loaded = [(model.backbone.patch_embed.proj[0].weight, 'patch_embed.proj.0.weight'),
                  (model.neck.proj.weight, 'proj.weight')]
        if not finetune:
            loaded.append((model.head.fc.weight, 'head.weight'))
        for ours, key in loaded:
            assert torch.allclose(ours.detach(), official[key].reshape(ours.shape), atol=1e-3)
