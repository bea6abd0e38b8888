"""Hostile or broken files are refused, naming the file or the field, before training
where possible: checkpoints that would run code (every loading path, URLs too),
truncated, corrupted or of another model; configs with a bad backbone; images that are
missing, empty or do not decode; annotation files that are empty or list nothing.
Checkpoints that MMEngine wrote still load everywhere.
"""
import contextlib
import functools
import http.server
import json
import os
import shutil
import threading
import zipfile

import pytest
import timm
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope
from mmengine.runner import save_checkpoint

from official_layout import official_checkpoint, official_layout_state_dict
from pola_mm.checkpoint import load_pretrained_backbone, read_checkpoint
from pola_mm.engine import get_random_state
from pola_mm.models import PolaPVT
from test_reliability import CONFIG, load, train
from test_tools_detection import TINY_CHANNELS, TINY_PVT, TINY_SWIN, small_options, test_tool

TINY_PVT_ARCH = TINY_PVT['arch']


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from pola_mm.testing import make_shapes_coco
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_coco(str(root), num_images=dict(train=4, val=2), image_size=64)
    return root


@pytest.fixture(scope='module')
def options(data):
    options, _ = small_options(CONFIG, str(data))
    return options


@pytest.fixture(scope='module')
def trained(tmp_path_factory, options):
    """A checkpoint written by tools/train.py (1 epoch)."""
    work_dir = tmp_path_factory.mktemp('trained')
    train(work_dir, options)
    return work_dir / 'epoch_1.pth'


@pytest.fixture(scope='module')
def runner(tmp_path_factory, options, trained):
    """The runner of tools/test.py for the trained checkpoint (not run)."""
    args = test_tool.parse_args([CONFIG, str(trained), '--work-dir',
                                 str(tmp_path_factory.mktemp('test_runner'))])
    args.cfg_options = options
    return test_tool.build_runner(test_tool.build_config(args))


@pytest.fixture
def hostile(tmp_path, trained):
    """The trained checkpoint with an object whose unpickling creates ``marker``."""
    checkpoint = load(trained)
    checkpoint['meta']['note'] = RunsCode(tmp_path / 'marker')
    path = tmp_path / 'hostile.pth'
    torch.save(checkpoint, path)
    return path, tmp_path / 'marker'


@contextlib.contextmanager
def http_server(directory):
    """Serve ``directory`` on a free loopback port; yield the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_port}'
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache in ``tmp_path``; no proxy for the loopback server."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


REFUSED = (r'refusing to load .*hostile.pth: it is not a plain weights file \(Trying to load '
           r'unsupported GLOBAL posix.system whose module posix is blocked.\)')


def test_hostile_checkpoint_is_refused_by_test_py(hostile, options, tmp_path):
    path, marker = hostile
    args = test_tool.parse_args([CONFIG, str(path), '--work-dir', str(tmp_path / 'work')])
    args.cfg_options = options
    with pytest.raises(RuntimeError, match=REFUSED):
        test_tool.build_runner(test_tool.build_config(args)).test()
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_on_resume(hostile, options, tmp_path):
    path, marker = hostile
    with pytest.raises(RuntimeError, match=REFUSED):
        train(tmp_path / 'work', options, '--resume', str(path))
    assert not marker.exists()
    assert not list((tmp_path / 'work').glob('*.pth'))


def test_hostile_checkpoint_is_refused_as_backbone_init_and_by_timm(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'hostile.pth'
    torch.save(dict(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')),
                    note=RunsCode(marker)), path)
    with pytest.raises(RuntimeError, match=REFUSED):
        PolaPVT(TINY_PVT_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path))
                ).init_weights()
    with pytest.raises(RuntimeError, match=REFUSED):
        timm.create_model('pola_pvt_tiny', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_checkpoint_urls_are_read_weights_only(hostile, trained, runner, hub_dir):
    """MMEngine reads URLs with torch.hub.load_state_dict_from_url, which unpickles
    anything (weights_only=False); pola_mm downloads them and reads the file safely."""
    path, marker = hostile
    shutil.copy(trained, path.parent / 'trained.pth')
    with http_server(path.parent) as url:
        with pytest.raises(RuntimeError, match=r'refusing to load http://127.0.0.1:\d+/'
                                               r'hostile.pth: it is not a plain weights'):
            runner.load_checkpoint(f'{url}/hostile.pth')
        assert not marker.exists()
        assert (hub_dir / 'hostile.pth').exists()  # downloaded, then refused
        loaded = runner.load_checkpoint(f'{url}/trained.pth')
    expected = load(trained)['state_dict']
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert loaded['meta']['epoch'] == 1
    shutil.copy(path, hub_dir / 'resnet50-0676ba61.pth')  # torchvision://resnet50's file
    with pytest.raises(RuntimeError, match=r'refusing to load https://download.pytorch.org/'
                                           r'models/resnet50-0676ba61.pth: it is not a plain'):
        runner.load_checkpoint('torchvision://resnet50')
    assert not marker.exists()


def test_checkpoints_written_by_mmengine_load_as_backbone_init(tmp_path):
    """A checkpoint of MMEngine's (a message hub with HistoryBuffers and numpy arrays, the
    random states) initialises a Pola backbone."""
    backbone = PolaPVT(TINY_PVT_ARCH)
    hub = MessageHub.get_instance('pola_mm_test_backbone_init')
    hub.update_scalar('train/loss', 1.5)
    path = str(tmp_path / 'classifier.pth')
    save_checkpoint(dict(meta=dict(epoch=3), message_hub=hub.state_dict(),
                         random_state=get_random_state(),
                         state_dict={f'backbone.{k}': v
                                     for k, v in backbone.state_dict().items()}), path)
    report = load_pretrained_backbone(PolaPVT(TINY_PVT_ARCH), path)
    assert len(report['loaded']) == len(backbone.state_dict())


def _flip_bytes_in_largest_tensor(src, dst):
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    name_length = int.from_bytes(data[entry.header_offset + 26:entry.header_offset + 28],
                                 'little')
    extra_length = int.from_bytes(data[entry.header_offset + 28:entry.header_offset + 30],
                                  'little')
    start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
    data[start:start + 4] = bytes(b ^ 0xFF for b in data[start:start + 4])
    dst.write_bytes(bytes(data))
    return entry.filename


@pytest.mark.parametrize('damage', ['truncated', 'cut_at_10kb', 'empty', 'not_a_checkpoint',
                                    'flipped_bytes'])
def test_broken_checkpoint_is_named(damage, trained, runner, tmp_path):
    path = tmp_path / f'{damage}.pth'
    data = trained.read_bytes()
    if damage in ('truncated', 'cut_at_10kb'):  # torch.load: RuntimeError, bare OSError
        path.write_bytes(data[:len(data) // 2 if damage == 'truncated' else 10_000])
        message = rf'cannot read checkpoint .*{damage}.pth: it is truncated or not a PyTorch'
    elif damage == 'empty':
        path.write_bytes(b'')
        message = r'cannot read checkpoint .*empty.pth: it is truncated or not a PyTorch'
    elif damage == 'not_a_checkpoint':
        path.write_text('{"images": []}')
        message = (r'cannot read checkpoint .*not_a_checkpoint.pth: it is not a PyTorch '
                   r'checkpoint at all')
    else:
        entry = _flip_bytes_in_largest_tensor(trained, path)
        message = (rf'cannot read checkpoint .*flipped_bytes.pth: it is corrupted \(Bad '
                   rf'CRC-32 for file \'{entry}\'\)')
        assert load(path)['meta']['epoch'] == 1  # torch.load does not see it; the init does
        with pytest.raises(RuntimeError, match=message):
            read_checkpoint(str(path))
    with pytest.raises(RuntimeError, match=message):
        runner.load_checkpoint(str(path))


@pytest.fixture(scope='module')
def swin_detector_checkpoint(tmp_path_factory, options):
    """Weights of the same detector with a Pola-Swin backbone."""
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({'model.backbone': TINY_SWIN,
                         'model.neck.in_channels': TINY_CHANNELS[TINY_SWIN['type']],
                         'model.bbox_head.num_classes': options['model.bbox_head.num_classes']})
    init_default_scope('mmdet')
    path = tmp_path_factory.mktemp('swin') / 'swin_detector.pth'
    save_checkpoint(dict(meta=dict(epoch=1, iter=2),
                         state_dict=MODELS.build(cfg.model).state_dict()), str(path))
    return path


def test_checkpoint_of_another_model_is_refused_by_test_and_resume(
        swin_detector_checkpoint, runner, options, tmp_path):
    message = (r'(?s)swin_detector.pth does not fit the model \(RetinaNet\): The model and loaded '
               r'state dict do not match exactly\nsize mismatch for neck.lateral_convs.1.conv.'
               r'weight: .*\nunexpected key in source state_dict: \d+ \(backbone.patch_embed.'
               r'proj.weight, .*, \.\.\.\)\nmissing keys in source state_dict: \d+ \(backbone.')
    with pytest.raises(RuntimeError, match=message):
        runner.load_checkpoint(str(swin_detector_checkpoint))
    with pytest.raises(RuntimeError, match=message):
        train(tmp_path / 'resumed', options, '--resume', str(swin_detector_checkpoint))
    weights_only = tmp_path / 'weights.pth'
    torch.save({'state_dict': load(swin_detector_checkpoint)['state_dict']}, weights_only)
    with pytest.raises(ValueError, match=r'cannot resume from .*weights.pth: it has no '
                                         r'training state'):
        train(tmp_path / 'resumed', options, '--resume', str(weights_only))


def test_load_from_another_model_still_fine_tunes(swin_detector_checkpoint, options, tmp_path):
    """load_from starts a training from what fits (the head of a detector trained with
    another backbone, say), as in MMEngine."""
    runner = train(tmp_path, dict(options, load_from=str(swin_detector_checkpoint)))
    assert runner.iter == 2


@pytest.mark.parametrize('field,value,message', [
    ('arch', 'tinny', r"unknown arch 'tinny'; choose one of \['large', 'medium', 'small', "
                      r"'tiny'\]"),
    ('out_indices', (1, 4), r'out_indices must be ints in \[0, 3\], got \(1, 4\)'),
    ('frozen_stages', 5, r'frozen_stages must be an int in \[-1, 4\], got 5'),
], ids=['arch', 'out_indices', 'frozen_stages'])
def test_bad_backbone_config_fails_when_the_runner_is_built(field, value, message, options,
                                                            tmp_path):
    args = test_tool.parse_args([CONFIG, 'unused.pth', '--work-dir', str(tmp_path)])
    args.cfg_options = dict(options, **{f'model.backbone.{field}': value})
    with pytest.raises(ValueError, match=message):
        test_tool.build_runner(test_tool.build_config(args))


@pytest.fixture
def data_copy(data, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    return root


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty', 'missing'])
def test_bad_image_is_named(damage, data_copy, options, tmp_path):
    image = data_copy / 'train' / '00002.png'
    if damage == 'garbage':
        image.write_bytes(b'\x89PNG not really' * 20)
    elif damage == 'truncated':
        image.write_bytes(image.read_bytes()[:500])
    elif damage == 'empty':
        image.write_bytes(b'')
    else:
        image.unlink()
    options, _ = small_options(CONFIG, str(data_copy))
    error = {'garbage': AssertionError, 'truncated': AssertionError, 'empty': ValueError,
             'missing': FileNotFoundError}[damage]
    message = {'garbage': 'failed to load image: ', 'truncated': 'failed to load image: ',
               'empty': r'CocoDataset \(ann_file .*instances_train.json.\): sample files 1 '
                        r'empty \(0 bytes\): \[.',
               'missing': r'CocoDataset \(ann_file .*instances_train.json.\): sample files 1 '
                          r'missing: \[.'}[damage]
    with pytest.raises(error, match=message + str(image)):
        train(tmp_path / 'work', options)
    if damage in ('empty', 'missing'):  # found before training
        assert not list((tmp_path / 'work').glob('*/vis_data/scalars.json'))


@pytest.mark.parametrize('split,content', [
    ('train', ''),
    ('train', 'no_images'),
    ('train', 'no_annotations'),
    ('val', 'no_images'),
])
def test_bad_annotation_file_fails_before_training(split, content, data_copy, options,
                                                   tmp_path):
    ann_file = data_copy / 'annotations' / f'instances_{split}.json'
    if content:
        coco = json.loads(ann_file.read_text())
        coco['annotations'] = []
        if content == 'no_images':
            coco['images'] = []
        ann_file.write_text(json.dumps(coco))
    else:
        ann_file.write_text('')
    options, _ = small_options(CONFIG, str(data_copy))
    if not content:
        error, message = RuntimeError, (r'cannot build the data loader of CocoDataset '
                                        r"\(ann_file '.*instances_train.json'\): "
                                        r'JSONDecodeError: Expecting value: line 1 column 1')
    else:
        error, message = ValueError, (rf"CocoDataset \(ann_file '.*instances_{split}.json'\) "
                                      r'has no samples: the annotation file lists no images, '
                                      'or filter_cfg filtered out all of them')
    with pytest.raises(error, match=message):
        train(tmp_path / 'work', options)
    assert not list((tmp_path / 'work').glob('*/vis_data/scalars.json'))
