"""Reading released checkpoints: safe unpickling, key mapping, reports and clear errors."""
import ast
import errno
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.model.weight_init import PretrainedInit
from mmengine.runner.checkpoint import (_load_checkpoint, get_external_models, get_mmcls_models,
                                        get_torchvision_models)
from torch import nn

from official_layout import official_checkpoint, official_layout_state_dict, official_shapes
from pola_mm.checkpoint import (checkpoint_globals, load_pretrained_backbone, read_checkpoint,
                                reader, select_model_weights)
from pola_mm.models import PolaPVT, PolaSwinTransformer, released_backbone
from pola_mm.variants import RELEASED, V1_FAMILIES
from training_file import save_training_file

ROOT = Path(__file__).resolve().parents[1]

# learnable official keys after dropping head.* and the rebuilt buffers
OFFICIAL_KEY_COUNTS = {
    'pola_swin_tiny': 187, 'pola_swin_small': 343, 'pola_swin_base': 343,
    'pola_swin_base_384': 343, 'pola_pvt_tiny': 174, 'pola_pvt_small': 326,
    'pola_pvt_medium': 554, 'pola_pvt_large': 801,
}

def save_released_file(path, arch, with_yacs=True):
    """Save official-layout weights as the released training checkpoints are stored."""
    save_training_file(path, official_checkpoint(official_layout_state_dict(arch)),
                       'pola_swin', with_yacs)


@pytest.mark.parametrize('arch', sorted(m.name for m in RELEASED if m.family in V1_FAMILIES))
def test_released_layout_loads_every_key(arch, tmp_path):
    path = tmp_path / f'{arch}.pth'
    torch.save(official_checkpoint(official_layout_state_dict(arch)), path)
    report = load_pretrained_backbone(released_backbone(arch), str(path))
    assert len(report['loaded']) == OFFICIAL_KEY_COUNTS[arch]
    assert report['resized'] == []
    assert sorted(report['dropped']) == ['head.bias', 'head.weight']
    if 'swin' in arch:  # the official final norm initialises the last output norm
        assert report['converted'] == ['norm.weight -> norm3.weight', 'norm.bias -> norm3.bias']
        assert report['new'] == [f'norm{i}.{p}' for i in range(3) for p in ('bias', 'weight')]
    else:
        assert report['converted'] == [] and report['new'] == []


def test_buffers_and_wrapper_prefixes_of_a_training_file_are_dropped(tmp_path):
    """A Swin file as saved from a DDP-wrapped detector: `module.backbone.` prefixes and
    the official buffers (relative_position_index, attn_mask), which are rebuilt."""
    weights = official_layout_state_dict('pola_swin_tiny')
    buffers = {k: torch.zeros(shape) for k, shape in official_shapes('pola_swin_tiny').items()
               if k.endswith(('relative_position_index', 'attn_mask'))}
    assert len(buffers) == 11
    weights.update(buffers)
    path = tmp_path / 'wrapped.pth'
    torch.save({'state_dict': {f'module.backbone.{k}': v for k, v in weights.items()}}, path)
    report = load_pretrained_backbone(released_backbone('pola_swin_tiny'), str(path))
    assert len(report['loaded']) == 187
    assert sorted(report['dropped']) == sorted(['head.bias', 'head.weight', *buffers])


def test_yacs_config_loads_without_yacs(tmp_path):
    """The released files pickle a yacs CfgNode; they load where yacs is not importable,
    through weights-only unpickling, and the conversion tool keeps only the weights."""
    path = tmp_path / 'released.pth'
    save_released_file(path, 'pola_pvt_tiny')
    dst = tmp_path / 'converted.safetensors'
    script = textwrap.dedent(f'''
        import sys
        sys.modules['yacs'] = None  # any import of yacs fails
        from pola_mm.checkpoint import read_checkpoint
        from pola_mm.models import PolaPVT
        from pola_mm.checkpoint import load_pretrained_backbone
        checkpoint = read_checkpoint({str(path)!r})
        assert type(checkpoint['config']).__name__ == 'OrderedDict', type(checkpoint['config'])
        assert checkpoint['config']['MODEL']['TYPE'] == 'pola_swin'
        report = load_pretrained_backbone(PolaPVT('tiny'), {str(path)!r})
        assert len(report['loaded']) == 174
        sys.argv = ['convert', {str(path)!r}, {str(dst)!r}]
        sys.path.insert(0, {str(ROOT / 'tools')!r})
        import convert_checkpoint
        sys.exit(convert_checkpoint.main())
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'kept 176 weight tensors' in result.stdout
    assert 'dropped entries: config, epoch, max_accuracy, optimizer' in result.stdout
    from safetensors.torch import load_file
    converted = load_file(dst)
    assert set(converted) == set(official_layout_state_dict('pola_pvt_tiny'))


def test_code_in_a_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'payload': Exploit()}, path)
    with pytest.raises(RuntimeError, match='refusing to load .*evil.pth.*not a plain weights'):
        read_checkpoint(str(path))
    assert not marker.exists()


def convert_checkpoint_main(*argv: str) -> int:
    """tools/convert_checkpoint.py's ``main`` on ``argv``, in this process."""
    spec = importlib.util.spec_from_file_location('pola_tools_convert_checkpoint',
                                                  ROOT / 'tools' / 'convert_checkpoint.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(argv))


# torch.load's error for a zip archive cut at its first bytes is a RuntimeError (no central
# directory); cut after about 5 to 66 KB, its zip reader seeks before the file's start and
# the file object raises a bare OSError (EINVAL) naming no file; longer cuts: RuntimeError.
@pytest.mark.parametrize('size', [2_000, 10_000, 40_000, 100_000])
def test_truncated_and_missing_files_are_named(size, tmp_path, capsys):
    path = tmp_path / 'cut.pth'
    torch.save(official_checkpoint({'w': torch.randn(200, 200), 'b': torch.randn(200)}), path)
    assert path.stat().st_size > 150_000
    path.write_bytes(path.read_bytes()[:size])
    truncated = r'cannot read checkpoint .*cut.pth: it is truncated or not a PyTorch checkpoint'
    with pytest.raises(RuntimeError, match=truncated):
        read_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        read_checkpoint(str(tmp_path / 'nowhere.pth'))
    assert convert_checkpoint_main(str(path), str(tmp_path / 'out.safetensors')) == 1
    error = capsys.readouterr().err
    assert re.fullmatch(f'error: {truncated} \\(.*\\)\n', error), error
    assert not (tmp_path / 'out.safetensors').exists()


def test_convert_checkpoint_names_a_destination_it_cannot_write(tmp_path, capsys):
    path = tmp_path / 'released.pth'
    torch.save(official_checkpoint({'w': torch.randn(2, 2)}), path)
    (tmp_path / 'a_file').write_text('')
    assert convert_checkpoint_main(str(path), str(tmp_path / 'a_file' / 'out.pth')) == 1
    assert re.fullmatch(r"error: \[Errno \d+\] .*: '.*a_file'\n", capsys.readouterr().err)


@pytest.mark.parametrize('error', [
    PermissionError(errno.EACCES, 'Permission denied', 'x.pth'),
    IsADirectoryError(errno.EISDIR, 'Is a directory', 'x.pth'),
    OSError(errno.EIO, 'Input/output error'),
    OSError(errno.EINVAL, 'Invalid argument', 'x.pth'),
], ids=lambda error: type(error).__name__ + str(error.errno))
def test_errors_of_reading_a_file_are_not_called_truncation(error):
    """Only the OSError torch.load raises for a cut file (EINVAL, naming no file) becomes
    'truncated'; a file that cannot be read keeps its own error."""
    with pytest.raises(type(error)) as raised, reader.checkpoint_read_errors('x.pth'):
        raise error
    assert raised.value is error


def test_weights_are_picked_in_the_documented_order():
    weights = {'module.backbone.a': torch.zeros(1)}
    assert list(select_model_weights({'model': weights, 'state_dict': {}})) == ['a']
    assert list(select_model_weights({'state_dict': weights})) == ['a']
    assert list(select_model_weights(weights)) == ['a']
    with pytest.raises(RuntimeError, match="only holds EMA weights"):
        select_model_weights({'state_dict_ema': weights, 'epoch': 1})


def test_checkpoint_of_another_arch_names_the_keys(tmp_path):
    path = tmp_path / 'swin_small.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_swin_small')), path)
    with pytest.raises(RuntimeError, match=r'swin_small.pth: checkpoint does not fit '
                       r'PolaSwinTransformer: unexpected keys 156 \(layers.2.blocks.10'):
        load_pretrained_backbone(PolaSwinTransformer('tiny'), str(path))
    path = tmp_path / 'pvt.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')), path)
    with pytest.raises(RuntimeError, match='missing keys'):
        load_pretrained_backbone(PolaSwinTransformer('tiny'), str(path))


def test_wrong_shapes_are_named(tmp_path):
    weights = official_layout_state_dict('pola_pvt_tiny')
    weights['block1.0.mlp.fc1.weight'] = torch.zeros(256, 64)
    path = tmp_path / 'bad.pth'
    torch.save(official_checkpoint(weights), path)
    with pytest.raises(RuntimeError, match=r'block1.0.mlp.fc1.weight: checkpoint \(256, 64\) '
                       r'vs model \(512, 64\)'):
        load_pretrained_backbone(PolaPVT('tiny'), str(path))


def test_positional_tables_are_resized_for_another_pretraining_size(tmp_path):
    """224 weights into a model pretrained at 384 (window 12): the Pola positional
    encodings and relative position tables are resized bicubically and reported."""
    path = tmp_path / 'base.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_swin_base')), path)
    model = PolaSwinTransformer('base', pretrain_img_size=384, window_size=12)
    report = load_pretrained_backbone(model, str(path))
    assert len(report['resized']) == 4 + 20  # positional encodings + bias tables
    assert ('layers.0.blocks.0.attn.positional_encoding (1, 3136, 128) -> (1, 9216, 128)'
            in report['resized'])
    assert model.layers[2].blocks[0].attn.relative_position_bias_table.shape == (529, 16)


def test_pvt_positional_tables_are_resized_for_another_pretraining_size(tmp_path):
    """224 weights into a Pola-PVT pretrained at 256: the stage tables ``pos_embed1``..
    ``pos_embed4`` are resized like the attention positional encodings, and it runs."""
    path = tmp_path / 'pvt.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')), path)
    model = PolaPVT('tiny', pretrain_img_size=256)
    report = load_pretrained_backbone(model, str(path))
    stage_tables = [entry for entry in report['resized'] if entry.startswith('pos_embed')]
    assert stage_tables == ['pos_embed1 (1, 3136, 64) -> (1, 4096, 64)',
                            'pos_embed2 (1, 784, 128) -> (1, 1024, 128)',
                            'pos_embed3 (1, 196, 320) -> (1, 256, 320)',
                            'pos_embed4 (1, 49, 512) -> (1, 64, 512)']
    assert any('attn.positional_encoding' in entry for entry in report['resized'])
    assert len(report['loaded']) + len(report['resized']) == 174
    model.eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(out.shape) for out in outputs] == [(1, 64, 16, 16), (1, 128, 8, 8),
                                                     (1, 320, 4, 4), (1, 512, 2, 2)]


@pytest.mark.parametrize('arch,key,table,model_shape', [
    ('pola_swin_tiny', 'layers.2.blocks.0.attn.relative_position_bias_table', (170, 12),
     (169, 12)),
    ('pola_pvt_tiny', 'pos_embed4', (1, 50, 512), (1, 49, 512)),  # PVT-v1 style: cls token
], ids=['swin_bias_table', 'pvt_pos_embed_with_cls_token'])
def test_positional_table_of_no_square_grid_is_a_shape_mismatch(tmp_path, arch, key, table,
                                                                 model_shape):
    """A positional table that would need a resize but holds no square grid of tokens is
    refused as a shape mismatch: the file, the key and both shapes are named."""
    weights = official_layout_state_dict(arch)
    weights[key] = torch.zeros(table)
    path = tmp_path / 'odd.pth'
    torch.save(official_checkpoint(weights), path)
    message = (r'odd.pth: checkpoint does not fit .*; shape mismatches 1 \(' +
               re.escape(f'{key}: checkpoint {table} vs model {model_shape})'))
    with pytest.raises(RuntimeError, match=message):
        load_pretrained_backbone(released_backbone(arch), str(path))


def test_init_cfg_logs_the_report(tmp_path, capsys):
    path = tmp_path / 'pvt.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')), path)
    MMLogger.get_instance('pola_mm_test_init_cfg')
    backbone = PolaPVT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert 'Loaded' in text and '174 loaded' in text and '2 dropped' in text


@pytest.mark.parametrize('prefix', ['backbone', 'backbone.'])
def test_init_cfg_prefix_takes_the_backbone_out_of_a_detector_checkpoint(tmp_path, prefix):
    """A whole detector's checkpoint (as tools/train.py writes it) initialises a backbone
    through ``prefix``; without it the neck's keys do not fit."""
    trained = PolaPVT('tiny')
    trained.init_weights()
    weights = {f'backbone.{k}': v for k, v in trained.state_dict().items()}
    weights['neck.lateral_convs.0.conv.weight'] = torch.zeros(8, 64, 1, 1)
    path = tmp_path / 'detector.pth'
    torch.save({'meta': {'epoch': 3}, 'state_dict': weights}, path)

    backbone = PolaPVT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                             prefix=prefix))
    backbone.init_weights()
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[name], value, rtol=0, atol=0,
                                   msg=name)
    with pytest.raises(RuntimeError, match=r"unexpected keys 1 \(neck.lateral_convs.*it holds "
                       r"a whole model's weights: prefix='backbone' takes its backbone"):
        load_pretrained_backbone(PolaPVT('tiny'), str(path))
    with pytest.raises(RuntimeError, match=r"no weights under the prefix 'model.backbone.'; "
                       r"its keys begin \['backbone', 'neck'\]"):
        load_pretrained_backbone(PolaPVT('tiny'), str(path), prefix='model.backbone')


def test_malformed_pretrained_init_cfg_is_named():
    for init_cfg in (dict(type='Pretrained', checkpiont='x.pth'),
                     dict(type='Pretrained', checkpoint='x.pth', prefixes='backbone')):
        with pytest.raises(ValueError, match='malformed Pretrained init_cfg'):
            PolaPVT('tiny', init_cfg=init_cfg).init_weights()


def test_checkpoint_package_does_not_depend_on_the_models():
    """Dependencies run one way: the models use pola_mm.checkpoint, never the reverse.
    Imported in a fresh interpreter without the package's ``__init__`` (which registers
    the models), pola_mm.checkpoint pulls in no module of pola_mm.models; and it imports
    at module level only (no function-level import hiding a cycle)."""
    script = textwrap.dedent(f'''
        import sys, types
        package = types.ModuleType('pola_mm')
        package.__path__ = [{str(ROOT / 'pola_mm')!r}]
        sys.modules['pola_mm'] = package
        import pola_mm.checkpoint
        print(' '.join(sorted(m for m in sys.modules if m.startswith('pola_mm.'))))
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = result.stdout.split()
    assert 'pola_mm.checkpoint.loading' in imported
    assert not [m for m in imported if m.startswith('pola_mm.models')], imported
    for path in (ROOT / 'pola_mm' / 'checkpoint').glob('*.py'):
        tree = ast.parse(path.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import,
                                                                          ast.ImportFrom))]
        assert all(node in tree.body for node in imports), f'function-level import in {path}'


def test_init_cfg_map_location_reaches_the_reader(tmp_path, monkeypatch):
    """``map_location`` of a Pretrained init_cfg is where the file's tensors are read to."""
    from pola_mm.checkpoint import loading
    path = tmp_path / 'pvt.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')), path)
    locations = []

    def recording_reader(filename, map_location='cpu'):
        locations.append(map_location)
        return read_checkpoint(filename, map_location)

    def to_cpu(storage, location):
        return storage

    monkeypatch.setattr(loading, 'read_checkpoint', recording_reader)
    PolaPVT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                  map_location=to_cpu)).init_weights()
    PolaPVT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()
    assert locations == [to_cpu, 'cpu']


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_map_location_of_an_unavailable_device_is_named(tmp_path):
    """map_location='cuda' where CUDA is unavailable: the error says the tensors cannot be
    mapped to that device, not that the (sound) file is damaged."""
    path = tmp_path / 'pvt.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')), path)
    message = (r"cannot load checkpoint .*pvt.pth with map_location='cuda': its tensors "
               r"cannot be mapped to device 'cuda' here \(.*torch.cuda.is_available\(\) "
               r"is False\)")
    with pytest.raises(RuntimeError, match=message) as error:
        load_pretrained_backbone(PolaPVT('tiny'), str(path), map_location='cuda')
    assert 'truncated' not in str(error.value)
    with pytest.raises(RuntimeError, match=message):
        PolaPVT('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                      map_location='cuda')).init_weights()
    with pytest.raises(RuntimeError, match=r"map_location=device\(type='cuda'\): its tensors "
                                           r"cannot be mapped to device 'cuda' here"):
        read_checkpoint(str(path), map_location=torch.device('cuda'))


def test_checkpoint_paths_may_be_path_objects(tmp_path):
    """A pathlib.Path (any os.PathLike) names a checkpoint like a str; anything else that
    is no str is refused naming the argument and the type received."""
    path = tmp_path / 'pvt.pth'
    torch.save(official_checkpoint(official_layout_state_dict('pola_pvt_tiny')), path)
    assert len(load_pretrained_backbone(PolaPVT('tiny'), path)['loaded']) == 174
    assert list(read_checkpoint(path)) == list(read_checkpoint(str(path)))
    backbone = PolaPVT('tiny', init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    torch.testing.assert_close(backbone.pos_embed1,
                               official_layout_state_dict('pola_pvt_tiny')['pos_embed1'],
                               rtol=0, atol=0)
    for checkpoint, received in ((None, 'NoneType'), (3, 'int')):
        with pytest.raises(ValueError, match=f'checkpoint path must be a file name or URL '
                                             rf'\(a str or an os.PathLike\), got {received}'):
            load_pretrained_backbone(PolaPVT('tiny'), checkpoint)
        with pytest.raises(ValueError, match=f'got {received}'):
            PolaPVT('tiny', init_cfg=dict(type='Pretrained',
                                          checkpoint=checkpoint)).init_weights()
        with pytest.raises(ValueError, match=f'checkpoint filename must be .*got {received}'):
            read_checkpoint(checkpoint)


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def mmengine_checkpoint():
    """What MMEngine's checkpoints hold besides tensors: a message hub (HistoryBuffers of
    numpy arrays, pickling ``getattr``), numpy arrays, scalars and dtypes."""
    hub = MessageHub.get_instance('pola_mm_test_checkpoint_numpy')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', 0.5)
    return dict(meta=dict(epoch=2, seed=np.int64(7), lr=np.float32(0.25)),
                message_hub=hub.state_dict(), state_dict={'w': torch.arange(4.)},
                table=np.arange(6, dtype=np.int16).reshape(2, 3), kind=np.dtype('float16'))


def assert_mmengine_checkpoint(checkpoint):
    assert checkpoint['meta'] == {'epoch': 2, 'seed': 7, 'lr': 0.25}
    assert type(checkpoint['meta']['seed']) is np.int64
    loss = checkpoint['message_hub']['log_scalars']['train/loss']
    assert (loss.current(), loss.mean(), loss.min()) == (0.5, 1.0, 0.5)
    torch.testing.assert_close(checkpoint['state_dict']['w'], torch.arange(4.))
    np.testing.assert_array_equal(checkpoint['table'], np.arange(6).reshape(2, 3))
    assert checkpoint['table'].dtype == np.int16 and checkpoint['kind'] == np.float16


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """torch.hub's cache (``TORCH_HOME``) and MMEngine's home in ``tmp_path``; any download
    fails the test."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))

    def no_download(url, dst, *args, **kwargs):
        raise AssertionError(f'downloaded {url}')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    assert str(cache) == os.path.join(torch.hub.get_dir(), 'checkpoints')
    return cache


def test_urls_read_by_mmengine_are_read_weights_only(hub_cache, tmp_path):
    """MMEngine reads URLs with torch.hub.load_state_dict_from_url, which unpickles anything
    (weights_only=False). With pola_mm imported, a file that would run code, found in
    torch.hub's cache, is refused by MMEngine's own entry points and nothing runs, while
    plain weights and MMEngine's checkpoints load."""
    marker = tmp_path / 'marker'
    torch.save({'w': torch.zeros(1), 'note': RunsCode(marker)}, hub_cache / 'evil.pth')
    refused = (r'refusing to load https://example.com/models/evil.pth: it is not a plain '
               r'weights file \(Trying to load unsupported GLOBAL posix.system')
    with pytest.raises(RuntimeError, match=refused):
        _load_checkpoint('https://example.com/models/evil.pth')
    with pytest.raises(RuntimeError, match=refused):
        PretrainedInit(checkpoint='https://example.com/models/evil.pth')(nn.Linear(2, 3))
    with pytest.raises(RuntimeError, match=refused):
        read_checkpoint('https://example.com/models/evil.pth')
    assert not marker.exists()

    linear = nn.Linear(2, 3)
    torch.save(linear.state_dict(), hub_cache / 'linear.pth')
    initialised = nn.Linear(2, 3)
    PretrainedInit(checkpoint='http://example.com/linear.pth')(initialised)
    torch.testing.assert_close(initialised.weight, linear.weight, rtol=0, atol=0)
    torch.save(mmengine_checkpoint(), hub_cache / 'run.pth')
    assert_mmengine_checkpoint(_load_checkpoint('https://example.com/run.pth'))
    checkpoint = _load_checkpoint('https://example.com/linear.pth', map_location='meta')
    assert checkpoint['weight'].device.type == 'meta'


def test_url_download_and_model_dir(hub_cache, tmp_path, monkeypatch):
    """A URL not in the cache is downloaded there, where torch.hub keeps it, then read;
    MMEngine's ``model_dir`` argument is another cache. A failed download names the URL."""
    torch.save({'w': torch.ones(2)}, tmp_path / 'served.pth')
    downloads = []

    def download(url, dst, hash_prefix=None, progress=True):
        downloads.append((url, dst))
        if 'missing' in url:
            raise OSError('HTTP Error 404: Not Found')
        with open(dst, 'wb') as file:
            file.write((tmp_path / 'served.pth').read_bytes())

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    url = 'https://example.com/a/served.pth?download=1'
    for _ in range(2):  # the second read finds the cached file
        torch.testing.assert_close(_load_checkpoint(url)['w'], torch.ones(2))
    assert downloads == [(url, str(hub_cache / 'served.pth'))]
    model_dir = tmp_path / 'models'
    assert reader.load_from_http(url, model_dir=str(model_dir))['w'].sum() == 2
    assert downloads[1:] == [(url, str(model_dir / 'served.pth'))]
    with pytest.raises(RuntimeError, match='cannot download checkpoint https://example.com/'
                                           'missing.pth: HTTP Error 404: Not Found'):
        _load_checkpoint('https://example.com/missing.pth')


@pytest.mark.parametrize('filename,table', [
    ('torchvision://resnet50', get_torchvision_models),
    ('modelzoo://resnet50', get_torchvision_models),
    ('open-mmlab://resnet50_v1c', get_external_models),
    ('openmmlab://resnet50_v1c', get_external_models),
    ('mmcls://resnet50', get_mmcls_models),
], ids=['torchvision', 'modelzoo', 'open-mmlab', 'openmmlab', 'mmcls'])
def test_model_zoo_schemes_are_read_weights_only(filename, table, hub_cache, tmp_path):
    """MMEngine's model zoos resolve to URLs that it reads like any URL (unrestricted
    unpickling); pola_mm reads them from torch.hub's cache weights-only."""
    url = table()[filename.split('://')[1]]
    cached = hub_cache / os.path.basename(url)
    marker = tmp_path / 'marker'
    torch.save({'state_dict': {'backbone.w': torch.ones(1)}, 'note': RunsCode(marker)},
               cached)
    with pytest.raises(RuntimeError, match=f'refusing to load {url}: it is not a plain '):
        _load_checkpoint(filename)
    with pytest.raises(RuntimeError, match=f'refusing to load {url}: it is not a plain '):
        read_checkpoint(filename)
    assert not marker.exists()
    torch.save({'state_dict': {'backbone.w': torch.ones(1)}}, cached)
    expected = ['w'] if filename.startswith('mmcls') else ['backbone.w']  # as MMEngine's
    assert list(_load_checkpoint(filename)['state_dict']) == expected


def test_model_zoo_files_and_unknown_names(hub_cache, tmp_path):
    """open-mmlab:// names that ``$MMENGINE_HOME/open_mmlab.json`` maps to a file are read
    from MMEngine's home, weights-only; an unknown name is named."""
    home = tmp_path / 'mmengine_home'
    home.mkdir()
    (home / 'open_mmlab.json').write_text(json.dumps({'mine': 'mine.pth', 'evil': 'evil.pth'}))
    torch.save(mmengine_checkpoint(), home / 'mine.pth')
    torch.save({'note': RunsCode(tmp_path / 'marker')}, home / 'evil.pth')
    assert_mmengine_checkpoint(_load_checkpoint('open-mmlab://mine'))
    with pytest.raises(RuntimeError, match=r'refusing to load open-mmlab://evil: it is not a '
                                           r'plain weights file \(Trying to load unsupported'):
        _load_checkpoint('open-mmlab://evil')
    assert not (tmp_path / 'marker').exists()
    with pytest.raises(RuntimeError, match="cannot read checkpoint torchvision://resnet5: "
                                           "MMEngine knows no torchvision:// checkpoint named "
                                           "'resnet5'"):
        read_checkpoint('torchvision://resnet5')


def test_file_backend_uris_are_read_weights_only(tmp_path, monkeypatch):
    """``s3://`` and ``petrel://`` URIs: the bytes of MMEngine's file backend, unpickled
    weights-only with the allow-list (so MMEngine's checkpoints load)."""
    marker = tmp_path / 'marker'
    torch.save(mmengine_checkpoint(), tmp_path / 'run.pth')
    torch.save({'note': RunsCode(marker)}, tmp_path / 'evil.pth')
    requests = []

    class Backend:
        def get(self, uri):
            return (tmp_path / os.path.basename(uri)).read_bytes()

    def get_file_backend(uri, backend_args):
        requests.append((uri, backend_args))
        return Backend()

    monkeypatch.setattr(reader, 'get_file_backend', get_file_backend)
    assert_mmengine_checkpoint(_load_checkpoint('s3://bucket/run.pth'))
    assert_mmengine_checkpoint(read_checkpoint('cluster:petrel://bucket/run.pth'))
    with pytest.raises(RuntimeError, match=r'refusing to load s3://bucket/evil.pth: it is not '
                                           r'a plain weights file'):
        read_checkpoint('s3://bucket/evil.pth')
    assert not marker.exists()
    assert requests[1] == ('cluster:petrel://bucket/run.pth', {'backend': 'petrel'})


def _with_numpy_1_names(src, dst):
    """``src`` as saved where numpy 1.x is installed: its pickle names numpy's array and
    scalar constructors ``numpy.core.multiarray.*``, not ``numpy._core.multiarray.*``."""
    with zipfile.ZipFile(src) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(dst, 'w') as archive:
        for name, data in entries:
            if name.endswith('/data.pkl'):
                assert b'numpy._core.multiarray\n_reconstruct' in data
                assert b'numpy._core.multiarray\nscalar' in data
                data = data.replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n')
                assert b'_core' not in data
            archive.writestr(name, data)


def test_checkpoints_pickled_under_numpy_1_load(tmp_path):
    """MMEngine's checkpoints written under numpy 1 name ``numpy.core.multiarray``; they
    load (tests, resume) with the same values under numpy 2, and vice versa."""
    torch.save(mmengine_checkpoint(), tmp_path / 'numpy2.pth')
    _with_numpy_1_names(tmp_path / 'numpy2.pth', tmp_path / 'numpy1.pth')
    for name in ('numpy1.pth', 'numpy2.pth'):
        assert_mmengine_checkpoint(read_checkpoint(str(tmp_path / name)))
        assert_mmengine_checkpoint(_load_checkpoint(str(tmp_path / name)))


def test_allow_list_blocks_nest(tmp_path):
    """A loader entering checkpoint_globals inside an enclosing block leaves that block's
    allow-list (and any added by torch.serialization.add_safe_globals) in place."""
    path = tmp_path / 'run.pth'
    torch.save(mmengine_checkpoint(), path)
    before = set(torch.serialization.get_safe_globals())  # torch may restore another order
    with checkpoint_globals():
        assert_mmengine_checkpoint(read_checkpoint(str(path)))  # enters and leaves its own
        assert_mmengine_checkpoint(torch.load(path, weights_only=True))
    assert set(torch.serialization.get_safe_globals()) == before


def test_files_that_are_no_pytorch_checkpoint_are_named(tmp_path):
    """A text file or another pickle is named as no PyTorch checkpoint, not as a file to
    re-save; the legacy (non-zip) format still loads."""
    text = tmp_path / 'notes.pth'
    text.write_text('git lfs pointer\n')
    data = tmp_path / 'data.pth'
    data.write_bytes(np.arange(3).dumps())  # a pickle, not torch.save's
    for path, begins in ((text, r"b'git lfs pointer\\n'"), (data, r"b'\\x80\\x02c")):
        message = (f'cannot read checkpoint {path}: it is not a PyTorch checkpoint at all '
                   rf'\(it begins {begins}')
        with pytest.raises(RuntimeError, match=message):
            read_checkpoint(str(path))
        with pytest.raises(RuntimeError, match=message):  # MMEngine's stock entry point
            _load_checkpoint(str(path))
    legacy = tmp_path / 'legacy.pth'
    torch.save(mmengine_checkpoint(), legacy, _use_new_zipfile_serialization=False)
    assert_mmengine_checkpoint(read_checkpoint(str(legacy)))
