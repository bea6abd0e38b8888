"""ONNX export (tools/deployment/export_onnx.py) with dynamic batch, height and width.

A small backbone of each family (:data:`FAMILIES`, random weights) with each exporter
(dynamo and TorchScript), and models built from the released task configs, are exported
once at one size and run in onnxruntime at other sizes; their outputs must equal PyTorch's
within 1e-4 (relative to the largest output). The export-only code paths of the models are
also checked in PyTorch against the eager ones. A classifier is also exported from a
released-style ImageNet file (official layout) of its weights.
"""
import os.path as osp
import sys

import onnx
import onnxruntime
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from pola_mm.models import PolaPP, PolaPVT, PolaSwinTransformer
from pola_mm.ops.pola_torch import polarity_linear_attention_torch
from pola_mm.ops.polarity_attention import polarity_linear_attention_traceable
from test_image_demo import save_released_classifier

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CONFIG = osp.join(REPO, 'configs', 'segmentation',
                      'fpn_pola-pvt-tiny_8xb2-40k_ade20k-512x512.py')
UPERNET_CONFIG = osp.join(REPO, 'configs', 'segmentation',
                          'upernet_pola-swin-tiny_8xb2-160k_ade20k-512x512.py')
TOLERANCE = 1e-4
SMALL_SEGMENTOR = """
_base_ = [{base!r}]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                            num_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2]),
                  init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    decode_head=dict(in_channels=[32, 32, 32, 32], channels=16, norm_cfg=norm_cfg,
                     num_classes=5))
"""


sys.path.insert(0, osp.join(REPO, 'tools', 'deployment'))
import export_onnx as export_tool  # noqa: E402

#: (family, builder of a small backbone of it): each family is exported with each exporter
#: and checked against PyTorch; a new family is one more entry.
FAMILIES = [
    ('pola-pvt', lambda: PolaPVT(dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                      num_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]))),
    ('pola-swin', lambda: PolaSwinTransformer(dict(embed_dims=16, depths=[1, 1, 2, 2],
                                                   num_heads=[1, 1, 2, 2]))),
    ('polapp', lambda: PolaPP(dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                                   num_heads=[1, 2, 2, 4]))),
]
BUILDERS = dict(FAMILIES)
#: (exporter, opset) of the backbone graphs: both exporters at the tool's default opset, and
#: the TorchScript exporter at opset 11, that of MMDeploy's deploy configs
EXPORTS = [(exporter, export_tool.OPSET) for exporter in export_tool.EXPORTERS] + [
    ('torchscript', 11)
]
TRACE_SIZE = (224, 224)
#: neither is the traced size; 231 x 289 is no multiple of the total stride 32, so the
#: graph pads (patches, and Swin's patch merging and windows) at every stage
CHECK_SIZES = [(256, 320), (231, 289)]


def perturb_pola_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for what the official initialisation leaves at zero (Pola scale,
    power and positional tables, PolaFormer++ temperatures), so that the attention is not
    a trivial one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(('.scale', '.power', 'positional_encoding', 'pos_embed1',
                              'pos_embed2', 'pos_embed3', 'pos_embed4', '.s1', '.s2')):
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def small_backbone(family: str) -> torch.nn.Module:
    """The :data:`FAMILIES` backbone of ``family``: official initialisation (seeded),
    then :func:`perturb_pola_parameters`."""
    torch.manual_seed(0)
    backbone = BUILDERS[family]()
    backbone.init_weights()
    return perturb_pola_parameters(backbone)


def test_traceable_core_equals_lean_path():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=generator) for n in (63, 15, 15))
    power = 1 + 4 * torch.rand(1, 3, 1, 8, generator=generator)
    scale = 0.5 + torch.rand(1, 3, 1, 8, generator=generator)
    for divisor in (None, scale):
        expected = polarity_linear_attention_torch(q, k, v, power, scale=divisor)
        torch.testing.assert_close(
            polarity_linear_attention_traceable(q, k, v, power, scale=divisor), expected,
            rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('family', BUILDERS)
def test_export_paths_equal_eager_model(family, monkeypatch):
    """What the graph computes (always padded, resized and shifted as values, one window
    size, an extra padded row and column of windows) equals the eager model at every size
    minimum_input_size allows."""
    model = small_backbone(family)
    sizes = [size for size in [(193, 250), (224, 224), (320, 480), (97, 131)]
             if min(size) >= export_tool.minimum_input_size(model)]
    assert sizes
    for size in sizes:
        image = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(image)
            monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
            exported = model(image)
            monkeypatch.undo()
        assert len(exported) == len(expected)
        for got, want in zip(exported, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_minimum_input_size_is_where_windows_shrink(monkeypatch):
    """Below 32 * (7 - 1) + 1 = 193 px per side the eager Pola-Swin-T attends its last
    stage in smaller windows (6 x 6 here, where the graph keeps 7 x 7 ones): the tool
    refuses those sizes."""
    swin = small_backbone('pola-swin')
    assert export_tool.minimum_input_size(swin) == 193
    assert export_tool.minimum_input_size(PolaPVT('tiny')) == 32
    image = torch.randn(1, 3, 192, 300)
    with torch.no_grad():
        eager = swin(image)[-1]
        monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
        assert not torch.allclose(swin(image)[-1], eager, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match='below 193 px'):
        export_tool.check_sizes(swin, [(192, 300)])


@pytest.mark.parametrize('exporter, opset', EXPORTS,
                         ids=[f'{exporter}-opset{opset}' for exporter, opset in EXPORTS])
@pytest.mark.parametrize('family', BUILDERS)
def test_backbone_graph_has_dynamic_sizes(family, exporter, opset, tmp_path):
    """Exported once at 224 x 224 (batch 2), the graph runs at 256 x 320 and 231 x 289
    (batch 1) with the stage maps of PyTorch."""
    backbone = small_backbone(family)
    path = str(tmp_path / f'{family}.onnx')
    names = export_tool.export_onnx(backbone, path, TRACE_SIZE, opset, dict(family=family),
                                    exporter)

    graph = onnx.load(path)
    assert [output.name for output in graph.graph.output] == names
    assert names == [f'feat{i}' for i in range(len(names))]
    assert [(op.domain, op.version) for op in graph.opset_import
            if op.domain == ''] == [('', opset)]
    assert {p.key: p.value for p in graph.metadata_props} == dict(family=family)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']

    results = export_tool.compare_with_onnxruntime(backbone, path, CHECK_SIZES)
    assert [shape for shape, _ in results] == [(1, 3, *size) for size in CHECK_SIZES]
    for shape, differences in results:
        assert len(differences) == len(names)
        assert max(differences) < TOLERANCE, (shape, differences)


def _random_checkpoint(config: str, scope: str, path: str) -> None:
    cfg = Config.fromfile(config)
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=perturb_pola_parameters(model).state_dict(),
                    meta=dict(dataset_meta=dict(classes=list('abcde')))), path)


@pytest.mark.parametrize('exporter', export_tool.EXPORTERS)
def test_segmentor_graph_from_config(exporter, tmp_path, capsys):
    """The Semantic FPN config's whole-image logits, exported at 128 x 128 by the tool's
    command line with each exporter, match PyTorch at 128 x 128 and 96 x 160; its head's
    upsampling (an int() of the size in mmseg) is replaced by the same resize with a
    symbolic size."""
    config = str(tmp_path / 'segmentor.py')
    with open(config, 'w') as f:
        f.write(SMALL_SEGMENTOR.format(base=SEG_CONFIG))
    checkpoint = str(tmp_path / 'segmentor.pth')
    _random_checkpoint(config, 'mmseg', checkpoint)

    model, cfg = export_tool.build_model(config, checkpoint)
    image = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        before = model.encode_decode(image, [dict(img_shape=image.shape[2:])])
        module = export_tool.exported_module(model, cfg.default_scope, 'model')
        after = module(image)
    assert any(isinstance(m, export_tool.IntegralUpsample) for m in module.modules())
    assert after.shape == (1, 5, 96, 160)
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    out = str(tmp_path / 'onnx' / 'segmentor.onnx')
    _, results = export_tool.main([
        config, checkpoint, '--out', out, '--shape', '128', '128', '--check-shape', '128',
        '128', '--check-shape', '96', '160', '--exporter', exporter
    ])
    printed = capsys.readouterr().out
    assert f'{exporter} exporter, opset 20' in printed and 'seg_logits' in printed
    assert [shape for shape, _ in results] == [(1, 3, 128, 128), (1, 3, 96, 160)]
    for shape, differences in results:
        assert max(differences) < TOLERANCE, (shape, differences)
    metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert metadata['part'] == 'model' and metadata['mean'] == str(cfg.model.data_preprocessor.mean)


SMALL_PVT = """
    backbone=dict(init_cfg=None, arch=dict(_delete_=True, embed_dims=[16, 32, 48, 64],
                  depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2])),
"""
SMALL_MODELS = {
    'detection/retinanet_pola-pvt-t_fpn_1x_coco.py': ('mmdet', """
model = dict(%s
    neck=dict(in_channels=[16, 32, 48, 64], out_channels=16),
    bbox_head=dict(in_channels=16, feat_channels=16, num_classes=4))
""" % SMALL_PVT, ['feat0', 'feat1', 'feat2', 'feat3', 'feat4']),
    'classification/pola-pvt-tiny_in1k-pre_8xb32_custom.py': ('mmpretrain', """
model = dict(%s
    head=dict(num_classes=3, in_channels=64))
""" % SMALL_PVT, ['logits']),
}


@pytest.mark.parametrize('exporter', export_tool.EXPORTERS)
@pytest.mark.parametrize('base', sorted(SMALL_MODELS), ids=lambda base: base.split('/')[0])
def test_detector_and_classifier_graphs(base, exporter, tmp_path, capsys):
    """A detector's backbone + neck (five FPN levels) and a classifier's logits, from the
    released configs with a small backbone, exported at 96 x 96 by each exporter and
    checked at 64 x 128."""
    scope, text, names = SMALL_MODELS[base]
    config = str(tmp_path / 'model.py')
    with open(config, 'w') as f:
        f.write(f'_base_ = [{osp.join(REPO, "configs", base)!r}]\n' + text)
    checkpoint = str(tmp_path / 'model.pth')
    _random_checkpoint(config, scope, checkpoint)
    out, results = export_tool.main([config, checkpoint, '--shape', '96', '96',
                                     '--check-shape', '64', '128', '--exporter', exporter])
    assert out == str(tmp_path / 'model.onnx')
    assert [o.name for o in onnx.load(out).graph.output] == names
    assert f'({scope})' in capsys.readouterr().out
    ((shape, differences), ) = results
    assert shape == (1, 3, 64, 128) and len(differences) == len(names)
    assert max(differences) < TOLERANCE


def test_classifier_graph_from_released_file(tmp_path, capsys):
    """A released-style ImageNet file of the small classifier and tools/convert_checkpoint.py's
    output load as the MMEngine checkpoint of the same weights does (tools/test.py's
    conversion); the graph exported from the released file computes that checkpoint's
    logits. A file of another architecture is refused, naming both."""
    base = 'classification/pola-pvt-tiny_in1k-pre_8xb32_custom.py'
    config = str(tmp_path / 'classifier.py')
    with open(config, 'w') as f:
        f.write(f'_base_ = [{osp.join(REPO, "configs", base)!r}]\n' + SMALL_MODELS[base][1])
    init_default_scope('mmpretrain')
    files = save_released_classifier(MODELS.build(Config.fromfile(config).model), tmp_path)
    reference, _ = export_tool.build_model(config, files['mmengine'])
    for kind in ('released', 'converted'):
        model, _ = export_tool.build_model(config, files[kind])
        assert model.state_dict().keys() == reference.state_dict().keys()
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (kind, key)

    out = str(tmp_path / 'released.onnx')
    export_tool.main([config, files['released'], '--out', out, '--shape', '96', '96',
                      '--check-shape', '64', '128', '--exporter', 'torchscript'])
    assert '(mmpretrain)' in capsys.readouterr().out
    image = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = export_tool.ClassifierLogits(reference)(image).numpy()
    session = onnxruntime.InferenceSession(out, providers=['CPUExecutionProvider'])
    (logits, ) = session.run(None, {'image': image.numpy()})
    assert logits.shape == expected.shape == (1, 3)
    assert abs(logits - expected).max() / abs(expected).max() < TOLERANCE

    with pytest.raises(RuntimeError, match=(
            r'other_arch\.pth holds a PolaPVT layout \(embed dims 16, depths \[1, 1, 1, 2\], '
            r'.*but the model is a PolaPVT layout .*\(the model of .*classifier\.py\)')):
        export_tool.build_model(config, files['other_arch'])

def test_fixed_grid_pooling_is_refused():
    """UPerHead's pooling pyramid has no ONNX form for dynamic sizes: refused, naming it."""
    cfg = Config.fromfile(UPERNET_CONFIG)
    cfg.model.backbone.arch = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=16,
                                 norm_cfg=dict(type='BN'))
    cfg.model.auxiliary_head.update(in_channels=64, channels=16, norm_cfg=dict(type='BN'))
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model).eval()
    with pytest.raises(ValueError, match=r'decode_head\.psp_modules\.1\.0.*--part backbone'):
        export_tool.exported_module(model, 'mmseg', 'model')
    assert export_tool.exported_module(model, 'mmseg', 'backbone') is model.backbone


def test_bad_files_are_named(tmp_path):
    config = str(tmp_path / 'segmentor.py')
    with open(config, 'w') as f:
        f.write(SMALL_SEGMENTOR.format(base=SEG_CONFIG))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        export_tool.build_model(config, str(tmp_path / 'missing.pth'))
    other = str(tmp_path / 'other.pth')
    torch.save(dict(state_dict=dict(weight=torch.zeros(3))), other)
    with pytest.raises(RuntimeError, match=r'other\.pth does not fit the model.*segmentor\.py'):
        export_tool.build_model(config, other)
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match='broken.pth'):
        export_tool.build_model(config, str(broken))
