"""MMPretrain classifiers of the released PolaFormer models (issue 7).

The classifier built from each evaluation config, loaded with a random checkpoint in the
official layout (tests/official_layout.py), must give the official model's logits for
those weights (tests/fixtures/official_golden/, produced by the authors' code). The
configs must also run through tools/test.py and tools/train.py on a generated dataset.
"""
import filecmp
import os
import os.path as osp
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
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
from pola_mm.checkpoint import describe_official_arch, official_classifier_state_dict
from pola_mm.engine import OfficialClassifierCheckpointHook
from pola_mm.testing.imagefolder import make_shapes_imagefolder
from pola_mm.variants import RELEASED, SWIN, ReleasedModel

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs', 'classification')


def eval_config_name(model: ReleasedModel) -> str:
    """``pola-swin-tiny_16xb64_in1k.py``, ``pola-swin-base_16xb64_in1k-384px.py``, ..."""
    stem = f'pola-{"swin" if model.family == SWIN else "pvt"}-{model.arch}'
    size = '' if model.img_size == 224 else f'-{model.img_size}px'
    return f'{stem}_16xb64_in1k{size}.py'


EVAL_CONFIGS = {model.name: eval_config_name(model) for model in RELEASED}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def build_classifier(arch: str) -> torch.nn.Module:
    """The ImageClassifier of ``arch``'s evaluation config, in eval mode."""
    cfg = Config.fromfile(osp.join(CONFIGS, EVAL_CONFIGS[arch]))
    init_default_scope('mmpretrain')
    return MODELS.build(cfg.model).eval()


def load_released(model: torch.nn.Module, released: dict, name: str) -> None:
    """Load a released-style dict the way ``load_from`` does: through the config's hook."""
    runner = SimpleNamespace(model=model, cfg=Config(dict(load_from=name)))
    OfficialClassifierCheckpointHook().after_load_checkpoint(runner, released)
    model.load_state_dict(released['state_dict'], strict=True)


@pytest.mark.parametrize('arch', sorted(EVAL_CONFIGS))
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
            for key, shape in official_shapes(arch).items()}


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


@pytest.mark.parametrize('arch', ['pola_pvt_tiny', 'pola_swin_base_384'])
def test_eval_preprocessing_is_the_official_one(arch, tmp_path):
    """The config's test pipeline + data preprocessor equal the official torchvision
    evaluation transform: resize the shorter side to int(S / 0.875) (bicubic), centre
    crop S, or for the 384 model (TEST.CROP False) resize to S x S; ImageNet mean/std."""
    cfg = Config.fromfile(osp.join(CONFIGS, EVAL_CONFIGS[arch]))
    init_default_scope('mmpretrain')
    pipeline = Compose(cfg.test_pipeline)
    preprocessor = MODELS.build(dict(type='ClsDataPreprocessor', **cfg.data_preprocessor))
    size = official_input_size(arch)
    resize = ([transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC)]
              if size == 384 else
              [transforms.Resize(int(size / 0.875), interpolation=InterpolationMode.BICUBIC),
               transforms.CenterCrop(size)])
    official = transforms.Compose(resize + [
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
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


def test_eval_config_reports_accuracy_with_tools_test(shapes_data):
    config = shapes_data / 'eval.py'
    config.write_text(
        f"_base_ = ['{CONFIGS}/pola-pvt-tiny_16xb64_in1k.py']\n"
        "test_dataloader = dict(batch_size=3, num_workers=0, dataset=dict(\n"
        f"    _delete_=True, type='CustomDataset', data_root='{shapes_data}/data',\n"
        "    data_prefix='val', pipeline={{_base_.test_pipeline}}))\n")
    output = run_tool('tools/test.py', str(config), str(shapes_data / 'pola_pvt_tiny.pth'),
                      '--work-dir', str(shapes_data / 'eval_work'))
    assert 'accuracy/top1' in output and 'accuracy/top5' in output
    assert 'Load checkpoint from' in output


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
