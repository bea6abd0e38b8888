"""The released PolaFormer and PolaFormer++ classifiers through timm (issue 7)."""
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms

import pola_mm  # noqa: F401  (registers the timm names)
from official_layout import official_checkpoint, official_input
from pola_mm.checkpoint import load_into, official_classifier_state_dict
from pola_mm.variants import released_model
from polapp_layout import GOLDEN_INPUTS, polapp_golden, polapp_input, polapp_num_params
from test_classification import (POLAPP_RELEASED, V1_RELEASED, authors_polapp_logits,
                                 build_classifier, load_released, polapp_features, relative_error,
                                 released_state_dict, save_training_file)


def pretrained_cfg(name: str) -> dict:
    return timm.models.get_pretrained_cfg(name).to_dict()


@pytest.fixture
def released_file(tmp_path):
    """Write a released-style file of ``arch`` with random weights; return its path."""

    def write(arch: str, seed: int = 0) -> str:
        path = tmp_path / f'{arch}.pth'
        torch.save(official_checkpoint(released_state_dict(arch, seed=seed)), path)
        return str(path)

    return write


def sample_images(arch: str, batch: int = 1) -> torch.Tensor:
    """Images for ``arch``: its official size; PolaFormer++ (any size) a small 96x128."""
    if arch in POLAPP_RELEASED:
        return polapp_input(0, (batch, 3, 96, 128))
    return official_input(arch, batch=batch)


@pytest.mark.parametrize('arch', V1_RELEASED + ['polapp_b0'])
def test_timm_logits_equal_mmpretrain_logits(arch, released_file):
    path = released_file(arch)
    model = timm.create_model(arch, pretrained=True,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    reference = build_classifier(arch)
    load_released(reference, {'model': released_state_dict(arch)}, arch)
    images = sample_images(arch)
    with torch.no_grad():
        logits = model(images)
        expected = reference(images, mode='tensor')
    assert logits.shape == (1, 1000)
    assert relative_error(logits, expected) < 1e-6


@pytest.mark.parametrize('name', POLAPP_RELEASED)
def test_polapp_names_build_the_authors_classifiers(name):
    """Parameter counts of the authors' classifiers (design note 2.1), the projection
    neck, and the authors' preprocessing in pretrained_cfg."""
    model = timm.create_model(name)
    width = released_model(name).head_args['projection']
    assert sum(param.numel() for param in model.parameters()) == polapp_num_params(name)
    assert model.num_features == model.head_hidden_size == width
    assert model.backbone.extra_norms is None  # the projection sees the raw last stage map
    assert model.neck.proj.out_channels == width and model.head.in_features == width
    cfg = model.pretrained_cfg
    assert model.get_submodule(cfg['first_conv']).in_channels == 3
    assert model.get_submodule(cfg['classifier']) is model.head
    assert (cfg['input_size'], cfg['crop_pct'], cfg['crop_mode'], cfg['interpolation']) == (
        (3, 224, 224), 0.875, 'squash', 'bicubic')


def test_pretrained_cfg_gives_the_official_preprocessing():
    config = resolve_data_config(model=timm.create_model('pola_pvt_tiny'))
    assert config == resolve_data_config(pretrained_cfg=pretrained_cfg('pola_pvt_tiny'))
    assert config['input_size'] == (3, 224, 224)
    assert config['crop_pct'] == 0.875 and config['interpolation'] == 'bicubic'
    assert config['mean'] == pytest.approx((0.485, 0.456, 0.406))
    resize, crop = create_transform(**config).transforms[:2]
    assert resize.size == 256 and crop.size == (224, 224)
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC

    # The 384 model is evaluated on the whole image resized to 384x384 (no crop).
    config = resolve_data_config(pretrained_cfg=pretrained_cfg('pola_swin_base_384'))
    resize, crop = create_transform(**config).transforms[:2]
    assert resize.size == (384, 384) and crop.size == (384, 384)

    # PolaFormer++: the whole image resized to 256x256 (not the shorter side), crop 224.
    config = resolve_data_config(pretrained_cfg=pretrained_cfg('polapp_b0'))
    resize, crop = create_transform(**config).transforms[:2]
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC
    resized = resize(Image.new('RGB', (500, 375)))
    assert resized.size == (256, 256) and crop(resized).size == (224, 224)


def test_polapp_loads_the_model_or_the_named_ema_weights(tmp_path):
    """A released PolaFormer++ training file (weights, EMA weights, optimizer, yacs
    config): its 'model' weights by default, 'state_dict_ema' only when named; the logits
    are the MMPretrain classifier's and the authors' classifier's."""
    path = str(tmp_path / 'polapp_b0.pth')
    released = save_training_file(path, 'polapp_b0')
    images = sample_images('polapp_b0', batch=2)
    reference = build_classifier('polapp_b0')
    for weights in (None, 'state_dict_ema'):
        model = timm.create_model('polapp_b0', pretrained=True, weights=weights,
                                  pretrained_cfg_overlay=dict(file=path)).eval()
        load_released(reference, {'model': released[weights or 'model']}, path)
        init = {} if weights is None else dict(weights=weights)
        with torch.no_grad():
            logits = model(images)
            assert torch.equal(logits, reference(images, mode='tensor'))
        expected = authors_polapp_logits(released[weights or 'model'],
                                         polapp_features(path, 'b0', images, **init))
        assert relative_error(logits, expected) < 1e-6

    only_ema = tmp_path / 'only_ema.pth'
    torch.save({'state_dict_ema': released['state_dict_ema']}, only_ema)
    with pytest.raises(RuntimeError, match='only holds EMA weights'):
        timm.create_model('polapp_b0', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(only_ema)))
    with pytest.raises(ValueError, match='needs pretrained=True'):
        timm.create_model('polapp_b0', weights='state_dict_ema')


@pytest.mark.parametrize('name', POLAPP_RELEASED)
def test_polapp_logits_equal_the_authors_goldens(name):
    """The recipe weights of tests/polapp_layout.py in our timm model give the logits of
    the authors' classifier (tests/fixtures/polapp_golden, float64) on a 197x311 image."""
    arch = released_model(name).arch
    model = timm.create_model(name).eval()
    load_into(model, official_classifier_state_dict(released_state_dict(name), model.backbone,
                                                    head_prefix='head.'))
    with torch.no_grad():
        logits = model(polapp_input(arch, GOLDEN_INPUTS['s197x311']))
    expected = torch.from_numpy(polapp_golden(arch)['s197x311_logits']).float()
    assert relative_error(logits, expected) < 1e-4


@pytest.mark.parametrize('arch, features_shape', [('pola_pvt_tiny', (1, 512, 7, 7)),
                                                  ('polapp_b0', (1, 2048, 3, 4))])
def test_new_head_keeps_the_released_backbone(arch, features_shape, released_file):
    path = released_file(arch)
    released = timm.create_model(arch, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=path)).eval()
    model = timm.create_model(arch, pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    images = sample_images(arch)
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == features_shape  # PolaFormer++: after the projection
        assert torch.equal(features, released.forward_features(images))
        assert model(images).shape == (1, 7)
        pooled = model.forward_head(features, pre_logits=True)
        model.reset_classifier(0)
        assert torch.equal(model(images), pooled)
    assert model.num_classes == 0 and pooled.shape == features_shape[:2]


def test_bad_requests_are_refused(released_file):
    with pytest.raises(ValueError, match='pretrained_cfg_overlay=dict\\(file=PATH\\)'):
        timm.create_model('pola_pvt_tiny', pretrained=True)
    with pytest.raises(ValueError, match='features_only'):
        timm.create_model('pola_pvt_tiny', features_only=True)
    with pytest.raises(RuntimeError, match='holds pola_pvt_tiny weights, but the model is '
                       'pola_pvt_small'):
        timm.create_model('pola_pvt_small', pretrained=True,
                          pretrained_cfg_overlay=dict(file=released_file('pola_pvt_tiny')))
    with pytest.raises(RuntimeError, match='holds polapp_b0 weights, but the model is '
                       'polapp_b1'):
        timm.create_model('polapp_b1', pretrained=True,
                          pretrained_cfg_overlay=dict(file=released_file('polapp_b0')))
