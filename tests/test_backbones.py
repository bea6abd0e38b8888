"""Backbone behaviour: layouts, any input size, the mmdet-style API and bad input."""
import re

import pytest
import torch

from official_layout import official_shapes
from pola_mm.models import PolaPVT, PolaSwinTransformer, released_backbone
from pola_mm.variants import RELEASED, V1_FAMILIES

TINY_SWIN = dict(embed_dims=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4])
TINY_PVT = dict(embed_dims=[16, 32, 32, 64], depths=[1, 2, 1, 1], num_heads=[1, 1, 1, 2],
                mlp_ratios=[2, 2, 2, 2])
SMALL_BACKBONES = {
    'swin': lambda **kw: PolaSwinTransformer(TINY_SWIN, pretrain_img_size=64, **kw),
    'pvt': lambda **kw: PolaPVT(TINY_PVT, pretrain_img_size=64, **kw),
}


@pytest.mark.parametrize('arch', sorted(m.name for m in RELEASED if m.family in V1_FAMILIES))
def test_parameters_match_official_layout(arch):
    """Same keys and shapes as the official checkpoint (minus classifier and buffers);
    Pola-Swin's official `norm` is our `norm3` and norm0-2 are its extra output norms."""
    official = {k: v for k, v in official_shapes(arch).items()
                if not k.startswith('head.') and not k.endswith(('_index', 'attn_mask'))}
    ours = {k: tuple(v.shape) for k, v in released_backbone(arch).state_dict().items()}
    if 'swin' in arch:
        official = {k.replace('norm.', 'norm3.', 1) if k.startswith('norm.') else k: v
                    for k, v in official.items()}
        extra = {k for k in ours if k.startswith(('norm0.', 'norm1.', 'norm2.'))}
        assert len(extra) == 6
        ours = {k: v for k, v in ours.items() if k not in extra}
    assert ours == official
    params = sum(torch.Size(s).numel() for s in official.values())
    assert params == sum(torch.Size(s).numel() for s in ours.values())


@pytest.mark.parametrize('family', ['swin', 'pvt'])
@pytest.mark.parametrize('size', [(64, 64), (97, 131), (33, 33), (130, 45), (32, 200)])
def test_any_input_size(family, size):
    backbone = SMALL_BACKBONES[family]().eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, *size))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape == (2, backbone.num_features[i], -(-size[0] // stride),
                             -(-size[1] // stride))
        assert torch.isfinite(out).all()


def test_window_attention_on_padded_maps():
    """Windows are independent: on a 9x10 map (padded to 14x14, padded keys masked) the
    first 7x7 window gives exactly what that 7x7 crop gives alone."""
    from pola_mm.models import ShiftWindowAttention
    torch.manual_seed(0)
    attn = ShiftWindowAttention(16, 2, window_size=7).eval()
    grid = torch.randn(1, 9, 10, 16)
    with torch.no_grad():
        full = attn(grid.reshape(1, 90, 16), (9, 10)).reshape(1, 9, 10, 16)
        crop = attn(grid[:, :7, :7].reshape(1, 49, 16), (7, 7)).reshape(1, 7, 7, 16)
    torch.testing.assert_close(full[:, :7, :7], crop)
    attn.shift = True
    with torch.no_grad():
        shifted = attn(grid.reshape(1, 90, 16), (9, 10))
    assert torch.isfinite(shifted).all() and not torch.allclose(shifted, full.reshape(1, 90, 16))


def test_window_attention_eager_path_equals_the_export_path(monkeypatch):
    """Eager calls roll the map and reuse a cached mask; while exporting the shift is a
    gather and the mask is built in the graph: same outputs and gradients, on a padded
    and shifted map, at the first call and at the cached second."""
    from pola_mm.models import ShiftWindowAttention, window_attention
    torch.manual_seed(0)
    attn = ShiftWindowAttention(16, 2, window_size=7, shift=True)
    x = torch.randn(2, 15 * 17, 16)

    def run():
        leaf = x.clone().requires_grad_()
        out = attn(leaf, (15, 17))
        out.square().sum().backward()
        return out.detach(), leaf.grad

    window_attention._cached_mask.cache_clear()
    eager = [run(), run()]
    assert window_attention._cached_mask.cache_info().hits >= 1
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    exported = run()
    for out, grad in eager:
        torch.testing.assert_close(out, exported[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, exported[1], rtol=1e-6, atol=1e-6)


def test_swin_window_stages_shift_only_when_the_map_exceeds_the_window():
    backbone = PolaSwinTransformer('tiny')
    attn = backbone.layers[2].blocks[1].attn
    assert attn.shift and attn.window_size == 7
    # at 224 stage 4 is 7x7 = one window: the official model never shifts there
    x = torch.randn(1, 49, 768)
    stage4 = backbone.layers[3].blocks[1].attn
    shifted_off = stage4(x, (7, 7))
    stage4.shift = False
    torch.testing.assert_close(shifted_off, stage4(x, (7, 7)), rtol=0, atol=0)


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_out_indices(family):
    backbone = SMALL_BACKBONES[family](out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [backbone.num_features[1], backbone.num_features[3]]


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_frozen_stages(family):
    backbone = SMALL_BACKBONES[family](frozen_stages=2)
    backbone.train()
    if family == 'swin':
        frozen = [backbone.patch_embed, backbone.layers[0], backbone.layers[1], backbone.norm0,
                  backbone.norm1]
        trainable = [backbone.layers[2], backbone.layers[3], backbone.norm2]
    else:
        frozen = [backbone.patch_embed1, backbone.block1, backbone.patch_embed2, backbone.block2]
        trainable = [backbone.patch_embed3, backbone.block3, backbone.block4]
        assert not backbone.pos_embed1.requires_grad and backbone.pos_embed3.requires_grad
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for module in trainable:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())
    outs = backbone(torch.randn(1, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    for module in frozen:
        assert all(p.grad is None for p in module.parameters())


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_frozen_stages_zero_freezes_the_stem_in_every_family(family):
    """``frozen_stages`` means the same in both families: 0 freezes the first patch
    embedding (and its positional table) only, -1 nothing."""
    backbone = SMALL_BACKBONES[family](frozen_stages=0).train()
    stem = backbone.patch_embed if family == 'swin' else backbone.patch_embed1
    first_stage = backbone.layers[0] if family == 'swin' else backbone.block1
    assert not stem.training and all(not p.requires_grad for p in stem.parameters())
    assert first_stage.training and all(p.requires_grad for p in first_stage.parameters())
    if family == 'pvt':
        assert not backbone.pos_embed1.requires_grad and backbone.pos_embed2.requires_grad
    unfrozen = SMALL_BACKBONES[family](frozen_stages=-1).train()
    not_trained = {name for name, p in unfrozen.named_parameters() if not p.requires_grad}
    # Pola-PVT's official final norm is unused and always frozen (see PolaPVT)
    assert not_trained == ({'norm.weight', 'norm.bias'} if family == 'pvt' else set())
    assert all(module.training for module in unfrozen.modules())


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_frozen_stages_drop_nothing_in_training(family):
    """Frozen parts stay in eval while the model trains: with dropout on, the frozen
    stages' outputs are the same in every forward (Pola-PVT's dropout after each positional
    table included), the others are not."""
    torch.manual_seed(0)
    backbone = SMALL_BACKBONES[family](frozen_stages=2, drop_rate=0.5).train()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = backbone(image), backbone(image)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[2], second[2])


def test_pvt_unused_norm_is_frozen_unless_asked_for():
    assert not any(p.requires_grad for p in PolaPVT(TINY_PVT).norm.parameters())
    frozen = PolaPVT(TINY_PVT, final_norm=True, frozen_stages=4).train()
    assert not frozen.norm.training
    assert not any(p.requires_grad for p in frozen.norm.parameters())
    backbone = PolaPVT(TINY_PVT, pretrain_img_size=64, final_norm=True)
    assert all(p.requires_grad for p in backbone.norm.parameters())
    outs = backbone(torch.randn(1, 3, 64, 64))
    outs[-1].sum().backward()
    assert backbone.norm.weight.grad is not None


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_with_cp_gives_the_same_gradients(family):
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        backbone = SMALL_BACKBONES[family](with_cp=with_cp, drop_path_rate=0.)
        image = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))
        sum(o.square().mean() for o in backbone(image)).backward()
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_bf16_autocast_is_finite_on_realistic_inputs(family):
    torch.manual_seed(0)
    backbone = SMALL_BACKBONES[family]()
    backbone.init_weights()
    with torch.no_grad():  # make the polarity maps sharp: large q/k, power near 5
        for name, param in backbone.named_parameters():
            if name.endswith('attn.power'):
                param.fill_(4.)
            elif name.endswith('attn.scale'):
                param.fill_(-3.)
    image = torch.randn(2, 3, 96, 128) * 2.5  # ImageNet-normalised pixel range
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = backbone(image)
    assert all(torch.isfinite(o.float()).all() for o in outs)
    reference = backbone(image)
    for out, ref in zip(outs, reference):  # bf16 keeps ~3 digits through every layer
        assert ((out.float() - ref).norm() / ref.norm()) < 0.3


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_bad_input_is_named(family):
    backbone = SMALL_BACKBONES[family]()
    with pytest.raises(ValueError, match=r'expected a \(B, 3, H, W\) input, got shape'):
        backbone(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r'image size \(1, 1\) is smaller than'):
        backbone(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r'expected a \(B, C, H, W\) image batch'):
        backbone(torch.randn(3, 64, 64))


@pytest.mark.parametrize('cls,arch,message', [
    (PolaSwinTransformer, 'huge', "unknown arch 'huge'; choose one of"),
    (PolaPVT, 'tiny_v2', "unknown arch 'tiny_v2'"),
    (PolaSwinTransformer, dict(embed_dims=96, depths=[2, 2, 6]), 'missing keys'),
    (PolaSwinTransformer, dict(embed_dims=96, depths=[2, 2, 6], num_heads=[3, 6, 12, 24]),
     "'depths' must be 4 positive ints"),
    (PolaPVT, dict(TINY_PVT, window=7), "unknown keys \\['window'\\]"),
    (PolaPVT, dict(TINY_PVT, depths=[True, 2, 1, 1]), "'depths' must be 4 positive ints"),
    (PolaSwinTransformer, ['tiny'], 'arch must be a str or a dict'),
])
def test_bad_arch_is_named(cls, arch, message):
    with pytest.raises(ValueError, match=message):
        cls(arch)


@pytest.mark.parametrize('kwargs,message', [
    (dict(out_indices=(0, 4)), 'out_indices must be ints in'),
    (dict(frozen_stages=5), 'frozen_stages must be an int in'),
    (dict(pretrain_img_size=100), 'pretrain_img_size must be a positive int multiple of 32, '
                                  'got 100'),
    (dict(pretrain_img_size=0), 'pretrain_img_size must be a positive int multiple of 32'),
    (dict(pretrain_img_size=224.), 'pretrain_img_size must be a positive int multiple of 32'),
    (dict(out_indices=(True, )), 'out_indices must be ints in'),
    (dict(frozen_stages=True), 'frozen_stages must be an int in'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be a number in \[0, 1\), got -0.1'),
    (dict(drop_path_rate=1.5), r'drop_path_rate must be a number in \[0, 1\), got 1.5'),
    (dict(drop_path_rate='0.1'), r"drop_path_rate must be a number in \[0, 1\), got '0.1'"),
    (dict(in_channels=0), 'in_channels must be a positive int, got 0'),
    (dict(in_channels=True), 'in_channels must be a positive int, got True'),
])
def test_bad_options_are_named(kwargs, message):
    for cls, arch in ((PolaSwinTransformer, TINY_SWIN), (PolaPVT, TINY_PVT)):
        with pytest.raises(ValueError, match=message):
            cls(arch, **kwargs)


@pytest.mark.parametrize('kwargs,message', [
    (dict(window_size=0), 'window_size must be a positive int, got 0'),
    (dict(window_size=-7), 'window_size must be a positive int, got -7'),
    (dict(window_size=7.), 'window_size must be a positive int, got 7.0'),
    (dict(patch_size=0), 'patch_size must be a positive int, got 0'),
])
def test_bad_swin_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolaSwinTransformer(TINY_SWIN, **kwargs)


def test_pvt_key_reduction_beyond_a_stage_grid_is_named():
    """sr_ratios reduce each stage's keys by a strided conv: a ratio larger than the
    stage's pretraining grid is refused when built, one larger than an image's stage grid
    when that image comes (both named, not a conv error)."""
    with pytest.raises(ValueError, match=r'sr_ratios \[8, 8, 8, 8\] reduce the 7x7 token '
                                         'grid of stage 4'):
        PolaPVT(dict(TINY_PVT, sr_ratios=[8, 8, 8, 8]))
    model = PolaPVT(dict(TINY_PVT, sr_ratios=[8, 4, 2, 2])).eval()
    with pytest.raises(ValueError, match=r'image size \(32, 40\) is too small for sr_ratios '
                                         r'\[8, 4, 2, 2\]: stage 4 .* at least 33 pixels'):
        model(torch.randn(1, 3, 32, 40))
    shapes = [tuple(out.shape[2:]) for out in model(torch.randn(1, 3, 33, 40))]
    assert shapes == [(9, 10), (5, 5), (3, 3), (2, 2)]


@pytest.mark.parametrize('ratio', [0, 0.001, -4., '4'])
def test_swin_mlp_ratio_leaving_no_hidden_channel_is_named(ratio):
    message = f'MLP of 16-channel blocks at least one hidden channel, got {ratio!r}'
    with pytest.raises(ValueError, match=re.escape(message)):
        PolaSwinTransformer(TINY_SWIN, mlp_ratio=ratio)


def test_swin_attn_types_must_be_l_or_s():
    with pytest.raises(ValueError, match="attn_types must be 4 letters of 'L'/'S'"):
        PolaSwinTransformer(dict(TINY_SWIN, attn_types='LLSX'))


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_init_cfg_initialisers_refine_the_official_init(family):
    """MMEngine initialisers in ``init_cfg`` apply over the official init (they were
    overwritten by it), the rest keeps the official init."""
    backbone = SMALL_BACKBONES[family](
        init_cfg=dict(type='Constant', layer='Linear', val=0.5, bias=0.))
    backbone.init_weights()
    linears = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all((m.weight == 0.5).all() for m in linears)
    assert all(m.bias is None or (m.bias == 0).all() for m in linears)
    table_name = 'pos_embed1' if family == 'pvt' else \
        'layers.2.blocks.0.attn.relative_position_bias_table'  # an 'S' stage
    table = backbone.get_parameter(table_name)
    assert 0.01 < table.std().item() < 0.03  # truncated normal, std .02


@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_init_cfg_list_loads_its_pretrained_entry_last(family, tmp_path):
    source = SMALL_BACKBONES[family]()
    path = str(tmp_path / 'backbone.pth')
    torch.save(source.state_dict(), path)
    backbone = SMALL_BACKBONES[family](init_cfg=[
        dict(type='Pretrained', checkpoint=path),
        dict(type='Constant', layer='Linear', val=0.5, bias=0.)])
    backbone.init_weights()
    for name, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name


@pytest.mark.parametrize('init_cfg,message', [
    (['Pretrained'], 'malformed init_cfg'),
    (dict(checkpoint='a.pth'), 'malformed init_cfg'),
    ('a.pth', 'malformed init_cfg'),
    ([dict(type='Pretrained', checkpoint='a.pth')] * 2, '2 Pretrained entries'),
    ([dict(type='Pretrained', path='a.pth')], 'malformed Pretrained init_cfg'),
])
def test_malformed_init_cfg_is_named(init_cfg, message):
    with pytest.raises(ValueError, match=message):
        SMALL_BACKBONES['pvt'](init_cfg=init_cfg).init_weights()


@pytest.mark.parametrize('family', ['swin', 'pvt'])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_empty_batch_gives_empty_maps(family, mode):
    """A batch of no images (as torch's own layers take it): empty maps of the usual
    channels and sizes, and zero gradients."""
    backbone = getattr(SMALL_BACKBONES[family](), mode)()
    outs = backbone(torch.randn(0, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (0, channels, 64 // 2**(s + 2), 96 // 2**(s + 2))
        for s, channels in enumerate(backbone.num_features)]
    sum(o.sum() for o in outs).backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)
