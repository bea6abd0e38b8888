"""Reading released checkpoints: safe unpickling, key mapping, reports and clear errors."""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.logging import MMLogger

from official_layout import official_checkpoint, official_layout_state_dict, official_shapes
from pola_mm.checkpoint import load_pretrained_backbone, read_checkpoint, select_model_weights
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


def test_truncated_and_missing_files_are_named(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save(official_checkpoint({'w': torch.randn(100, 100)}), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(RuntimeError, match='cannot read checkpoint .*cut.pth'):
        read_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        read_checkpoint(str(tmp_path / 'nowhere.pth'))


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
    with pytest.raises(RuntimeError, match=r'unexpected keys 1 \(neck.lateral_convs'):
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
