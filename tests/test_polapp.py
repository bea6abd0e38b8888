"""PolaFormer++ backbone: the released layouts, the mmdet-style API, released files and bad
input. The attention cores are tested in test_ops_polapp.py, the numbers of the authors'
own code in test_polapp_golden.py."""
import pytest
import torch
from mmengine.registry import MODELS
from torch import nn

from pola_mm.checkpoint import load_pretrained_backbone, read_checkpoint
from pola_mm.models import PolaPP
from pola_mm.models.polapp_attention import PolaPPLinearAttention
from pola_mm.variants import ARCHS, POLAPP
from training_file import save_training_file

# design note 2.1: the authors' dense backbones (with extra_norms) and key counts
DENSE_PARAMS = {'b0': 4_708_352, 'b1': 6_387_264, 'b2': 13_348_864, 'b3': 24_044_224,
                'b4': 46_697_440, 'b5': 93_568_672}
DENSE_KEYS = {'b0': 233, 'b1': 273, 'b2': 313, 'b3': 481, 'b4': 645, 'b5': 847}
CLASSIFIER_KEYS = ('proj.weight', 'proj.bias', 'norm.weight', 'norm.bias', 'norm.running_mean',
                   'norm.running_var', 'norm.num_batches_tracked', 'head.weight', 'head.bias')
TINY = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
            layer_scale_init=[1, 1, 1, 1])


def tiny(**kwargs) -> PolaPP:
    torch.manual_seed(0)
    return PolaPP(TINY, **kwargs)


def randomise(model: nn.Module) -> nn.Module:
    """Weights away from their initialisation (s1, s2 are zero there), BN statistics too."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith('angle'):
                noise = torch.randn(tensor.shape, generator=generator) * 0.2
                tensor.copy_(tensor.abs() + 0.5 if name.endswith('running_var') else
                             tensor + noise)
    return model


@pytest.mark.parametrize('arch', sorted(ARCHS[POLAPP]))
def test_released_archs_have_the_authors_sizes(arch):
    model = PolaPP(arch)
    assert sum(p.numel() for p in model.parameters()) == DENSE_PARAMS[arch]
    assert len(model.state_dict()) == DENSE_KEYS[arch]
    assert model.num_features == ARCHS[POLAPP][arch]['embed_dims']
    classifier_layout = PolaPP(arch, out_norms=False).state_dict()
    assert len(classifier_layout) == DENSE_KEYS[arch] - 8  # without extra_norms.{0..3}


@pytest.mark.parametrize('size', [(64, 64), (97, 131), (33, 47), (130, 45), (197, 311)])
def test_any_input_size_gives_ceil_strided_maps(size):
    model = tiny().eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    for i, out in enumerate(outs):
        stride = 2**(i + 2)
        assert out.shape == (2, TINY['embed_dims'][i], -(-size[0] // stride),
                             -(-size[1] // stride))
        assert torch.isfinite(out).all()


def test_out_indices_and_out_norms():
    model = tiny(out_indices=(1, 3)).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        normed = model(image)
        raw = tiny(out_indices=(1, 3), out_norms=False).eval()
        raw.load_state_dict(model.state_dict(), strict=False)
        plain = raw(image)
    assert [o.shape[1] for o in normed] == [32, 64]
    for normed_map, raw_map, norm in zip(normed, plain, (model.extra_norms[1],
                                                          model.extra_norms[3])):
        torch.testing.assert_close(normed_map, norm(raw_map))
    assert len(model.extra_norms) == 4  # key parity whatever out_indices is


def test_reference_core_gives_the_same_backbone():
    image = torch.randn(1, 3, 70, 90)
    lean, plain = randomise(tiny()).eval(), tiny(attn_impl='reference').eval()
    plain.load_state_dict(lean.state_dict())
    with torch.no_grad():
        for a, b in zip(lean(image), plain(image)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('batch', [1, 2])
def test_lepe_convolves_a_channels_last_view_of_the_values(batch):
    """No transposing copy before or after the lepe convolution: its input is a view of
    the projected values, channels-last for oneDNN also at batch 1."""
    model = tiny()
    seen = []
    for module in model.modules():
        if isinstance(module, PolaPPLinearAttention):
            module.lepe.register_forward_hook(
                lambda _, args, out: seen.append((args[0], out)))
    model(torch.randn(batch, 3, 64, 96))
    assert seen
    for values, out in seen:
        assert values._base is not None  # a view
        assert values.is_contiguous(memory_format=torch.channels_last)
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('frozen_stages', [0, 1, 3])
def test_frozen_stages(frozen_stages):
    model = tiny(frozen_stages=frozen_stages)
    model.train()
    frozen = list(model.patch_embed.parameters())
    for i in range(frozen_stages):
        frozen += list(model.layers[i].blocks.parameters())
        frozen += list(model.extra_norms[i].parameters())
        if i > 0:
            frozen += list(model.layers[i - 1].downsample.parameters())
    frozen_ids = {id(p) for p in frozen}
    for param in model.parameters():
        assert param.requires_grad == (id(param) not in frozen_ids)
    assert not model.patch_embed.training
    assert model.layers[frozen_stages].blocks.training == (frozen_stages < 4)


def test_norm_eval_keeps_batchnorm_statistics_but_trains_their_weights():
    model = tiny(norm_eval=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    sum(out.sum() for out in model(torch.randn(2, 3, 64, 64) * 3 + 1)).backward()
    after = model.state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert model.patch_embed.proj[1].weight.grad is not None
    moving = tiny(norm_eval=False)
    moving.train()
    moving(torch.randn(2, 3, 64, 64))
    assert not torch.equal(moving.state_dict()['patch_embed.proj.1.running_mean'],
                           before['patch_embed.proj.1.running_mean'])


def test_with_cp_gives_the_same_gradients():
    image = torch.randn(2, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        model = randomise(tiny(with_cp=with_cp, drop_path_rate=0.))
        model.eval()  # BN statistics fixed, the same forward twice under checkpointing
        sum(out.square().sum() for out in model(image)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


def test_syncbn_config_builds():
    model = MODELS.build(dict(type='pola_mm.PolaPP', arch=TINY,
                              norm_cfg=dict(type='SyncBN', requires_grad=True)))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 7 and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert isinstance(MODELS.build(dict(type='PolaPP', arch='b0')), PolaPP)


def test_bf16_autocast_is_finite():
    model = randomise(tiny()).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(image)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(image)
    for out, ref in zip(outs, reference):
        assert torch.isfinite(out).all()
        assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize('arch, error', [
    ('b9', 'unknown arch'),
    (dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1]), 'malformed arch'),
    (dict(TINY, num_heads=[1, 16, 2, 4]), 'multiple of 4'),
    (dict(TINY, layer_scale_init=[1, 1, 1]), 'layer_scale_init'),
    (dict(TINY, layer_scale_init=[True, 1, 1, 1]), 'layer_scale_init'),
    (dict(TINY, depths=[True, 1, 1, 1]), "'depths' must be 4 positive ints"),
    (dict(TINY, mlp_ratio=0.01), 'MLP of 16-channel blocks at least one hidden channel'),
    (dict(TINY, mlp_ratio='3.5'), "at least one hidden channel, got '3.5'"),
])
def test_bad_arch_is_named(arch, error):
    with pytest.raises(ValueError, match=error):
        PolaPP(arch)


@pytest.mark.parametrize('channels', [0, -1, 2.5])
def test_bad_in_channels_is_named(channels):
    with pytest.raises(ValueError, match=f'in_channels must be a positive int, got {channels}'):
        PolaPP(TINY, in_channels=channels)


@pytest.mark.parametrize('rate', [-0.1, 1.])
def test_bad_drop_path_rate_is_named(rate):
    message = rf'drop_path_rate must be a number in \[0, 1\), got {rate}'
    with pytest.raises(ValueError, match=message):
        PolaPP(TINY, drop_path_rate=rate)


def test_bad_images_are_named():
    model = tiny().eval()
    with pytest.raises(ValueError, match='3-channel'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='smaller than'):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match='attn_impl'):
        tiny(attn_impl='triton')


def released_file(path, arch, seed=0):
    """A training file in the authors' layout: a classifier under 'model' (backbone keys,
    ``proj``/``norm``/``head``), other values under 'state_dict_ema', a yacs config."""
    def classifier(offset):
        backbone = PolaPP(arch, out_norms=False).state_dict()
        torch.manual_seed(seed)
        weights = {k: (v + offset if v.is_floating_point() and not k.endswith('angle') else v)
                   for k, v in backbone.items()}
        weights.update({k: torch.randn(4) for k in CLASSIFIER_KEYS})
        return weights
    save_training_file(path, {'model': classifier(0.), 'state_dict_ema': classifier(1.),
                              'epoch': 299}, 'polab0')


def test_released_training_file_loads_model_weights_by_default(tmp_path):
    path = tmp_path / 'polapp_b0.pth'
    released_file(path, 'b0')
    model = PolaPP('b0', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    released = read_checkpoint(str(path))
    own = model.state_dict()
    for key, value in released['model'].items():
        if key not in CLASSIFIER_KEYS:
            assert torch.equal(own[key], value), key
    new = sorted(k for k in own if k.startswith('extra_norms.'))
    assert len(new) == 8 and all(own[k].eq(1 if k.endswith('weight') else 0).all() for k in new)


def test_ema_weights_load_only_when_named(tmp_path):

    path = tmp_path / 'polapp_b0.pth'
    released_file(path, 'b0')
    released = read_checkpoint(str(path))
    model = PolaPP('b0')
    report = load_pretrained_backbone(model, str(path), weights='state_dict_ema')
    key = 'layers.0.blocks.0.attn.s1'
    assert torch.equal(model.state_dict()[key], released['state_dict_ema'][key])
    # anchored classifier keys: attn.proj, downsample.norm and norm1.norm are kept
    assert sorted(report['dropped']) == sorted(CLASSIFIER_KEYS)
    assert 'layers.0.blocks.0.attn.proj.weight' in report['loaded']
    assert 'layers.0.downsample.norm.running_var' in report['loaded']
    assert report['new'] == sorted(k for k in model.state_dict() if k.startswith('extra_norms'))
    with pytest.raises(RuntimeError, match="no weights under 'ema'"):
        load_pretrained_backbone(model, str(path), weights='ema')


def test_checkpoint_of_another_arch_is_named(tmp_path):
    path = tmp_path / 'polapp_b0.pth'
    released_file(path, 'b0')
    model = PolaPP('b1', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match='another architecture'):
        model.init_weights()


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_empty_batch_gives_empty_maps(mode):
    """A batch of no images: empty maps of the usual channels and sizes, zero gradients."""
    model = getattr(tiny(), mode)()
    outs = model(torch.randn(0, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (0, channels, 64 // 2**(s + 2), 96 // 2**(s + 2))
        for s, channels in enumerate(TINY['embed_dims'])]
    sum(o.sum() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)
