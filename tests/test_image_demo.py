"""tools/demo/image_demo.py: the three OpenMMLab inferencers on generated images.

Each task runs from a config of this repository (detection: the ``make demo`` FCOS;
segmentation and classification: the Pola-PVT-T configs with a small backbone) and a
checkpoint of random weights with the class names a training run stores. Classification
also runs from a released-style ImageNet file of that small classifier (official layout,
as the authors' training code writes it) and from tools/convert_checkpoint.py's output,
with the predictions of the same weights in MMEngine's format.
"""
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from PIL import Image

from official_layout import official_checkpoint, recipe_state_dict
from pola_mm.testing import SHAPE_CLASSES, make_shapes_coco
from training_file import save_training_file

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIG = osp.join(REPO, 'configs', 'demo', 'fcos_pola-pvt-mini_shapes-256.py')
SMALL_PVT = """
    backbone=dict(arch=dict(_delete_=True, embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                            num_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]), init_cfg=None),
"""
SEG_CONFIG = """
_base_ = [{base!r}]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(%s
    neck=dict(in_channels=[16, 32, 48, 64], out_channels=16),
    decode_head=dict(in_channels=[16, 16, 16, 16], channels=16, norm_cfg=norm_cfg,
                     num_classes=5))
""" % SMALL_PVT
CLS_CONFIG = """
_base_ = [{base!r}]
model = dict(%s
    head=dict(num_classes=3, in_channels=64))
data_preprocessor = dict(num_classes=3)
""" % SMALL_PVT
SEG_CLASSES = ('background', 'disc', 'square', 'triangle', 'cross')
SEG_PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
CLS_CLASSES = ('cross', 'disc', 'square')


sys.path.insert(0, osp.join(REPO, 'tools', 'demo'))
sys.path.insert(0, osp.join(REPO, 'tools'))
import convert_checkpoint  # noqa: E402
import image_demo as demo_tool  # noqa: E402


def save_released_classifier(model: torch.nn.Module, directory, seed: int = 0) -> dict:
    """Random weights (tests/official_layout.py's recipe) of ``model``, an MMPretrain
    classifier around a Pola-PVT backbone, saved in ``directory``; returns the paths:

    * ``'released'``: in the official layout (the backbone's own names, which are
      Pola-PVT's official ones, and the linear classifier as ``head.*``) as the authors'
      training code writes it: under 'model', next to the optimizer state and a pickled
      yacs config (tests/training_file.py);
    * ``'converted'``: that file through tools/convert_checkpoint.py (``{'model': ...}``);
    * ``'mmengine'``: the same weights as MMEngine's checkpoint of ``model``;
    * ``'other_arch'``: a released-style file with one more block in stage 4.
    """
    def official_name(key: str) -> str:
        assert key.startswith(('backbone.', 'head.fc.')), key
        return key[len('backbone.'):] if key.startswith('backbone.') else \
            'head.' + key[len('head.fc.'):]

    shapes = {official_name(key): value.shape for key, value in model.state_dict().items()}
    official = recipe_state_dict(shapes, seed)
    paths = {kind: str(directory / f'{kind}.pth')
             for kind in ('released', 'converted', 'mmengine', 'other_arch')}
    save_training_file(paths['released'], official_checkpoint(official), 'pola_pvt_tiny')
    convert_checkpoint.convert(paths['released'], paths['converted'])
    torch.save(dict(state_dict={key: official[official_name(key)]
                                for key in model.state_dict()}, meta=dict()), paths['mmengine'])
    shapes.update({key.replace('block4.0.', 'block4.1.'): shape for key, shape in shapes.items()
                   if key.startswith('block4.0.')})
    torch.save(official_checkpoint(recipe_state_dict(shapes, seed)), paths['other_arch'])
    return paths


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A folder of two generated 64 x 64 shapes images."""
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_coco(root, num_images=dict(val=2), image_size=64, splits=('val', ))
    return osp.join(root, 'val')


def _config_and_checkpoint(tmp_path, task: str):
    """(config, checkpoint) of a task: random weights and the dataset meta of a run."""
    if task == 'detection':
        config, scope = DET_CONFIG, 'mmdet'
        meta = dict(classes=SHAPE_CLASSES)
    else:
        base, text, scope, meta = {
            'segmentation': ('segmentation/fpn_pola-pvt-tiny_8xb2-40k_ade20k-512x512.py',
                             SEG_CONFIG, 'mmseg',
                             dict(classes=SEG_CLASSES, palette=SEG_PALETTE)),
            'classification': ('classification/pola-pvt-tiny_in1k-pre_8xb32_custom.py',
                               CLS_CONFIG, 'mmpretrain', dict(classes=CLS_CLASSES)),
        }[task]
        config = str(tmp_path / f'{task}.py')
        with open(config, 'w') as f:
            f.write(text.format(base=osp.join(REPO, 'configs', base)))
    init_default_scope(scope)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    checkpoint = str(tmp_path / f'{task}.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=meta)), checkpoint)
    return config, checkpoint


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def test_detection_boxes_drawn_and_saved(images, tmp_path):
    config, checkpoint = _config_and_checkpoint(tmp_path, 'detection')
    out = str(tmp_path / 'out')
    image = osp.join(images, '00001.png')
    # the untrained FCOS scores about 0.01: keep its boxes so that they are saved
    demo_tool.main([config, checkpoint, image, '--out-dir', out, '--score-thr', '0.005',
                    '--cfg-options', 'model.test_cfg.score_thr=0.0',
                    'model.test_cfg.max_per_img=5',
                    'test_dataloader.dataset.pipeline.1.scale=(64,64)'])
    result = _read_json(osp.join(out, 'preds', '00001.json'))
    assert result['task'] == 'detection' and result['image'] == image
    assert result['visualization'] == osp.join(out, 'vis', '00001.png')
    assert Image.open(result['visualization']).size == (64, 64)
    assert result['score_thr'] == 0.005
    instances = result['instances']
    assert 1 <= len(instances) <= 5
    for instance in instances:
        assert set(instance) == {'label', 'class', 'score', 'bbox'}
        assert instance['class'] == SHAPE_CLASSES[instance['label']]
        assert instance['score'] >= 0.005
        x1, y1, x2, y2 = instance['bbox']
        assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64


def test_segmentation_label_map_drawn_and_saved(images, tmp_path):
    config, checkpoint = _config_and_checkpoint(tmp_path, 'segmentation')
    out = str(tmp_path / 'out')
    results = demo_tool.main([config, checkpoint, images, '--out-dir', out,
                              '--batch-size', '2'])
    assert len(results) == 2
    for name in ('00001', '00002'):
        result = _read_json(osp.join(out, 'preds', f'{name}.json'))
        assert result['task'] == 'segmentation'
        assert Image.open(result['visualization']).size == (64, 64)
        labels = np.array(Image.open(result['label_map']))
        assert labels.shape == (64, 64) == (result['height'], result['width'])
        present = result['classes_present']
        assert [c['label'] for c in present] == sorted(np.unique(labels).tolist())
        assert sum(c['pixels'] for c in present) == 64 * 64
        assert all(c['class'] == SEG_CLASSES[c['label']] for c in present)


def test_classification_topk_drawn_and_saved(images, tmp_path):
    config, checkpoint = _config_and_checkpoint(tmp_path, 'classification')
    out = str(tmp_path / 'out')
    demo_tool.main([config, checkpoint, images, '--out-dir', out, '--topk', '2'])
    for name in ('00001', '00002'):
        result = _read_json(osp.join(out, 'preds', f'{name}.json'))
        assert result['task'] == 'classification'
        assert result['visualization'] == osp.join(out, 'vis', f'{name}.png')
        assert Image.open(result['visualization']).size[0] >= 64
        topk = result['topk']
        assert len(topk) == 2
        assert topk[0]['score'] >= topk[1]['score'] > 0
        assert sum(t['score'] for t in topk) <= 1 + 1e-6
        assert all(t['class'] == CLS_CLASSES[t['label']] for t in topk)


def test_bad_input_is_named(images, tmp_path):
    config, checkpoint = _config_and_checkpoint(tmp_path, 'classification')
    image = osp.join(images, '00001.png')
    with pytest.raises(RuntimeError, match=r'classification\.pth does not fit the model'
                       r'.*fcos_pola-pvt-mini_shapes-256\.py'):
        demo_tool.main([DET_CONFIG, checkpoint, image, '--out-dir', str(tmp_path)])
    with pytest.raises(FileNotFoundError, match='image not found: .*missing.png'):
        demo_tool.main([config, checkpoint, osp.join(images, 'missing.png')])
    unreadable = tmp_path / 'unreadable.png'
    unreadable.write_text('not an image')
    with pytest.raises(ValueError, match='cannot read image .*unreadable.png'):
        demo_tool.main([config, checkpoint, str(unreadable)])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no images .* in .*empty'):
        demo_tool.main([config, checkpoint, str(tmp_path / 'empty')])


@pytest.fixture(scope='module')
def released_classifier(tmp_path_factory):
    """The small classification config and :func:`save_released_classifier`'s files."""
    root = tmp_path_factory.mktemp('released')
    config = str(root / 'classification.py')
    with open(config, 'w') as f:
        f.write(CLS_CONFIG.format(base=osp.join(
            REPO, 'configs', 'classification', 'pola-pvt-tiny_in1k-pre_8xb32_custom.py')))
    init_default_scope('mmpretrain')
    model = MODELS.build(Config.fromfile(config).model)
    return config, save_released_classifier(model, root)


def test_classification_takes_released_files(images, released_classifier, tmp_path):
    """A released file and tools/convert_checkpoint.py's output are converted as
    tools/test.py's hook does: the inferencer's model gets the weights of the MMEngine
    checkpoint and the same top-k classes."""
    config, files = released_classifier
    topk, weights = {}, {}
    for kind in ('mmengine', 'released', 'converted'):
        args = demo_tool.parse_args([config, files[kind], images, '--topk', '3'])
        demo = demo_tool.build_demo(config, files[kind], args)
        weights[kind] = demo.inferencer.model.state_dict()
        results = demo.predict(demo_tool.list_images(images), str(tmp_path / kind), 2)
        topk[kind] = [[(t['label'], t['score']) for t in result['topk']] for result in results]
    for kind in ('released', 'converted'):
        assert weights[kind].keys() == weights['mmengine'].keys()
        for key, value in weights['mmengine'].items():
            assert torch.equal(weights[kind][key], value), (kind, key)
        assert topk[kind] == topk['mmengine']
    assert len(topk['mmengine']) == 2 and len({s for t in topk['mmengine'] for _, s in t}) > 1


def test_classification_refuses_bad_released_files(images, released_classifier, tmp_path):
    config, files = released_classifier
    image = osp.join(images, '00001.png')
    out = ['--out-dir', str(tmp_path / 'out')]
    with pytest.raises(RuntimeError, match=(
            r'other_arch\.pth holds a PolaPVT layout \(embed dims 16, depths \[1, 1, 1, 2\], '
            r'.*but the model is a PolaPVT layout \(embed dims 16, depths \[1, 1, 1, 1\], '
            r'.*\(the model of .*classification\.py\)')):
        demo_tool.main([config, files['other_arch'], image, *out])
    official = torch.load(files['converted'], weights_only=True)['model']
    backbone_only = str(tmp_path / 'backbone_only.pth')
    torch.save(dict(model={key: value for key, value in official.items()
                           if not key.startswith('head.')}), backbone_only)
    with pytest.raises(RuntimeError, match=r'backbone_only\.pth has no classifier key '
                       r'head\.weight: it is not a released ImageNet classifier'):
        demo_tool.main([config, backbone_only, image, *out])
    # an MMEngine checkpoint is no released file: it must fit (here a 5-class head)
    five_classes = str(tmp_path / 'five_classes.pth')
    state_dict = torch.load(files['mmengine'], weights_only=True)['state_dict']
    state_dict.update({'head.fc.weight': torch.zeros(5, 64), 'head.fc.bias': torch.zeros(5)})
    torch.save(dict(state_dict=state_dict), five_classes)
    with pytest.raises(RuntimeError, match=r'five_classes\.pth does not fit the model: .*'
                       r'head\.fc\.weight: checkpoint \(5, 64\) vs model \(3, 64\).*'
                       r'classification\.py'):
        demo_tool.main([config, five_classes, image, *out])
